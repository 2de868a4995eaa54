"""Run one benchmark worker module in a fresh process (so peak memory is its own) and read its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from edgedistil.errors import EdgeError


def run_worker(module: str, spec: dict, failure: str, fix: str, env: dict | None = None,
               python: list[str] | None = None) -> dict:
    """`python -m module SPEC.json` must print one JSON line last; otherwise EdgeError(`failure: <its last
    stderr line>`, fix). `python` is the interpreter's command line (default: this one; the emulated ARM64 one
    for bench/emulated_arm64.py)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([*(python or [sys.executable]), "-m", module, f.name], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeError(f"{failure}: {last[:300]}", fix)
    return json.loads(proc.stdout.strip().splitlines()[-1])
