"""Shared fixtures: the tiny recipe built once per test session through the real CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgedistil.config import load_target

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models" / "tiny.toml"
TINY_BUDGETS = REPO / "tests" / "tiny_budgets.toml"


WEB_METHOD = load_target("web").quantization  # the quantize method, and so the stage name, a web build runs


def _web_runtime_env() -> dict:
    """The web bundle's npm runtime and the consumers' venvs (Optimum's) stay in the user's cache (`.ci/run`
    installs them) even where a test points EDGEDISTIL_CACHE at an empty folder; npm is kept offline so a test can
    never reach the registry."""
    from edgedistil.convert.web import npm_cache_root
    from edgedistil.runtimes.venv import venv_root

    return {"EDGEDISTIL_NPM_CACHE": str(npm_cache_root()), "EDGEDISTIL_VENVS": str(venv_root()),
            "npm_config_offline": "true"}


WEB_RUNTIME_ENV = _web_runtime_env()


def edgedistil(*args, cwd=None, env=None):
    """Run the real `edgedistil` CLI in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgedistil.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=full_env)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A whole `build --target web` of the tiny recipe; tests read its run folder and must not modify it."""
    out = tmp_path_factory.mktemp("tiny-run")
    proc = edgedistil("build", "--target", "web", "--config", TINY, "--budgets", TINY_BUDGETS, "--out", out,
                      env={"EDGEDISTIL_CACHE": str(tmp_path_factory.mktemp("cache")), **WEB_RUNTIME_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return out, proc


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """The tiny teacher's byte-level BPE tokenizer (trained in-process in about a second)."""
    from edgedistil.distill.data import load_tokenizer
    from edgedistil.sources import load_corpus, tiny_teacher

    return load_tokenizer(tiny_teacher(tmp_path_factory.mktemp("tok") / "t", load_corpus("tiny").text))
