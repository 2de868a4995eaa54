"""Security: no pickle is ever loaded, no remote code is run, and no secret from the environment is written."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, TINY, TINY_BUDGETS, WEB_RUNTIME_ENV

SECRET = "hf_EdgedistilTestSecret0123456789"

# Any unpickling in the whole chain raises at once: pickle can run code, and checkpoints are untrusted input.
NO_PICKLE = """
import pickle, sys, torch
def refuse(*a, **k):
    raise SystemExit("UNPICKLE ATTEMPTED")
class RefusingUnpickler(pickle.Unpickler):
    load = refuse
pickle.load = pickle.loads = torch.load = refuse
pickle.Unpickler = RefusingUnpickler
from edgedistil.cli import main
sys.exit(main())
"""


def test_whole_build_runs_with_unpickling_disabled_and_leaks_no_secret(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", NO_PICKLE, "build", "--target", "web", "--config", TINY,
                           "--budgets", TINY_BUDGETS, "--out", out], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_TOKEN": SECRET, "HUGGING_FACE_HUB_TOKEN": SECRET,
                               "EDGEDISTIL_CACHE": str(tmp_path / "cache"), **WEB_RUNTIME_ENV})
    assert "UNPICKLE ATTEMPTED" not in proc.stderr + proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stderr + proc.stdout
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_source_never_unpickles_or_trusts_remote_code():
    offenders = []
    for path in (REPO / "edgedistil").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path}:{n}: torch.load without weights_only=True")
            if re.search(r"\bpickle\.(load|loads|Unpickler)\b", code):
                offenders.append(f"{path}:{n}: pickle")
            if re.search(r"trust_remote_code\s*=\s*True", code):
                offenders.append(f"{path}:{n}: trust_remote_code=True")
    assert not offenders, offenders
