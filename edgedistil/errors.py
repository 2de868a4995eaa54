"""User-facing errors and the atomic file writes that keep a failed stage from leaving half an artifact."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class EdgeError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero.

    `problem` says what is wrong (naming the file, key or value); `fix` says what to do about it.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        text = self.problem + (f"; fix: {self.fix}" if self.fix else "")
        return " ".join(text.split())  # always one line


def _sibling_tmp(final: Path, is_dir: bool) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    make = tempfile.mkdtemp if is_dir else tempfile.mkstemp
    made = make(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    if not is_dir:
        os.close(made[0])
        made = made[1]
    # mkdtemp/mkstemp create owner-only entries; artifacts are shared (a web server serves dist/web), so give
    # them the permissions a plain mkdir/open would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(made, (0o777 if is_dir else 0o666) & ~umask)
    return Path(made)


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename, on failure it is removed.

    An existing `final` stays intact until the new one is complete.
    """
    final = Path(final)
    tmp = _sibling_tmp(final, is_dir=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success it is renamed over `final`, on failure deleted."""
    final = Path(final)
    tmp = _sibling_tmp(final, is_dir=False)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_json(path: Path | str, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path | str, what: str = "record") -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{what} {path} does not exist", "run the stage that writes it first, or check the path")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeError(f"{what} {path} is not valid JSON ({e})", "delete it and rerun the stage that writes it")


def read_jsonl_prefix(path: Path | str) -> list[dict]:
    """The rows of a JSONL file that a writer appends to, up to the first line a kill cut short ([] if none)."""
    path = Path(path)
    rows = []
    for ln in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            break
    return rows
