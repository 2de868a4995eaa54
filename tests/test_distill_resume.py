"""Checkpoints and --resume: a run killed with SIGKILL after a checkpoint and resumed ends with exactly the weights
of a run that was never interrupted (same data order, same RNG, same optimizer state)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY, edgedistil

STEPS, EVERY = 20, 4


def write_recipe(path):
    text = TINY.read_text().replace("steps = 30", f"steps = {STEPS}")
    text = text.replace("[distill]\n", f"[distill]\ncheckpoint_every = {EVERY}\npreflight_export = false\n")
    text = text.replace("eval_tokens = 2048", "eval_tokens = 256")
    path.write_text(text)
    return path


def weights(out):
    return load_file(str(out / "distill" / "student" / "model.safetensors"))


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml")
    env = {"EDGEDISTIL_CACHE": str(tmp_path / "cache")}

    straight = tmp_path / "straight"
    proc = edgedistil("distill", "--config", recipe, "--out", straight, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "straight" / "distill-checkpoints").exists()  # a finished run leaves none behind

    killed = tmp_path / "killed"
    ckpts = killed / "distill-checkpoints"
    child = subprocess.Popen([sys.executable, "-m", "edgedistil.cli", "distill", "--config", str(recipe), "--out",
                              str(killed)], cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # a finished checkpoint: a step-N folder (a temp folder being written holds state.json before its rename)
    while not (ckpts.is_dir() and any(p.name.startswith("step-") and (p / "state.json").is_file()
                                      for p in ckpts.iterdir())):
        assert child.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (killed / "distill" / "record.json").exists(), "the run finished before the kill; nothing resumed"
    at = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step-"))[-1]

    proc = edgedistil("distill", "--config", recipe, "--out", killed, "--resume", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming from {ckpts / at}" in proc.stderr
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # the resumed run's curve is the whole curve, equal to the uninterrupted one step for step
    import json

    rows = lambda out: [json.loads(x) for x in (out / "distill" / "train.jsonl").read_text().splitlines()]  # noqa
    assert [r["loss"] for r in rows(killed)] == [r["loss"] for r in rows(straight)]


def test_checkpoint_from_another_recipe_is_refused(tmp_path):
    from edgedistil.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from edgedistil.errors import EdgeError

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(1)
    save_checkpoint(tmp_path, 7, net, opt, gen, {"key": "abc", "curve": []})
    path = latest_checkpoint(tmp_path)
    assert path.name == "step-00000007"
    assert {p.suffix for p in path.iterdir()} == {".safetensors", ".json"}  # nothing pickled
    other = torch.nn.Linear(4, 3)
    other_opt = torch.optim.AdamW(other.parameters())
    state = load_checkpoint(path, other, other_opt, torch.Generator(), "abc")
    assert state["step"] == 7 and torch.equal(other.weight, net.weight)
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(EdgeError, match="another recipe"):
        load_checkpoint(path, other, other_opt, torch.Generator(), "xyz")
