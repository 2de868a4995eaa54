"""Reading the project's TOML files (recipes, target profiles, device profiles) key by key.

Every mistake becomes one line that names the file, the line that sets the key, and the fix. Kept apart from the
files' own schemas so that config.py (recipes, profiles) and check/devices.py (device profiles) both read TOML
the same way without importing each other.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from edgedistil.errors import EdgeError

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = REPO_ROOT / "targets"  # target profiles; device profiles under devices/


def read_toml(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{what} {path} does not exist", f"check the path, or run `edgedistil init` to write a {what}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise EdgeError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})", "save it as UTF-8 TOML")
    except tomllib.TOMLDecodeError as e:
        raise EdgeError(f"{what} {path} is not valid TOML: {e}", "fix the syntax at that line")


def key_line(path: Path, table: str | None, key: str) -> int | None:
    """The 1-based line where `key = ...` is set in `[table]` (None: the top level) of the TOML file `path`."""
    try:
        return key_line_in(path.read_text(encoding="utf-8").splitlines(), table, key)
    except (OSError, UnicodeDecodeError):
        return None


def key_line_in(lines: list[str], table: str | None, key: str) -> int | None:
    current = None
    for number, line in enumerate(lines, 1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header[1]
        elif current == table and re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return number
    return None


def at(where: str, key: str) -> str:
    """`where` ("file.toml" or "file.toml [table]") with the line that sets `key`: "file.toml:12 [table]"."""
    m = re.fullmatch(r"(.+?\.toml)(?: \[(\w+)\])?", where)
    line = m and key_line(Path(m[1]), m[2], key)
    if not line:
        return where
    return f"{m[1]}:{line}" + (f" [{m[2]}]" if m[2] else "")


def unknown_key(where: str, key: str, valid) -> EdgeError:
    near = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(sorted(valid))}"
    return EdgeError(f"{at(where, key)}: unknown key '{key}'", hint)


def coerce(where: str, key: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of the dataclass default; ints are accepted where floats are."""
    kind = type(default)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise EdgeError(
            f"{at(where, key)}: '{key}' must be {kind.__name__}, got {type(value).__name__} {value!r}",
            f"write it like {key} = {str(default).lower() if isinstance(default, bool) else repr(default)}",  # TOML
        )
    return value
