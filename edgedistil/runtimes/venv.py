"""Venvs of their own for tools whose pins clash with the project's (Optimum pins transformers 4.57, the peers and
lm-eval theirs), made once under `$EDGEDISTIL_VENVS`, else the edgedistil cache.

torch is installed first, alone, at the project's version (a CPU wheel already on disk), and every other package
is then resolved under a constraints file holding that pin: a dependency that wants another torch fails to resolve
instead of downloading gigabytes. A marker file names the pins a venv was made with; other pins remake it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

TORCH_PIN = "torch==2.13.0"  # the project's torch


def venv_root() -> Path:
    from edgedistil.sources.cache import cache_dir

    env = os.environ.get("EDGEDISTIL_VENVS")
    return Path(env).expanduser() if env else cache_dir()


def pinned_venv(name: str, pins: list[str], log=print) -> Path:
    """<venv root>/<name> with torch pinned first, then `pins` under the constraint; returns the venv folder."""
    venv = venv_root() / name
    venv.parent.mkdir(parents=True, exist_ok=True)
    # one maker at a time: two builds making one venv at once (`venv --clear` under a running pip) break it
    with open(venv.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _make(venv, pins, log)


def _make(venv: Path, pins: list[str], log) -> Path:
    marker = venv / "edgedistil-pins.txt"
    want = " ".join([TORCH_PIN, *pins])
    if marker.is_file() and marker.read_text() == want:
        return venv
    marker.unlink(missing_ok=True)  # a venv half remade is never taken for a finished one
    log(f"making {venv} with {want} (once; about two minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    subprocess.run([*pip, "-c", str(constraints), *pins], check=True)
    marker.write_text(want)
    return venv
