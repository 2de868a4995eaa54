"""torchrun: `edgedistil distill` under two DDP processes, and under two FSDP processes (student and teacher
sharded), on CPU (gloo) trains the same student as one process with the same global batch.

Tolerance: every rank draws the same global batch and takes half of its rows; DDP averages the two half-batch
gradients, which equals the whole-batch gradient up to floating-point summation order. After a few AdamW steps
the weights agree to well under 1e-5 (measured 2.4e-7 after 6 steps), while training moves them by far more than
that (checked below, so the comparison cannot pass by training nothing).
"""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import REPO, TINY, edgedistil
from edgedistil.sources import load_corpus, tiny_teacher

TOLERANCE = 1e-5


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one(tmp_path, parallel):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.read_text().replace("steps = 30", "steps = 4")
                      .replace("[distill]\n", f"[distill]\npreflight_export = false\nparallel = \"{parallel}\"\n")
                      .replace("eval_tokens = 2048", "eval_tokens = 256"))
    teacher = tiny_teacher(tmp_path / "teacher", load_corpus("tiny").text, seed=0)

    one = edgedistil("distill", "--config", recipe, "--teacher", teacher, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "edgedistil.cli", "distill", "--config", str(recipe), "--teacher", str(teacher),
                          "--out", str(tmp_path / "two")], cwd=REPO, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]

    record = json.loads((tmp_path / "two" / "distill" / "record.json").read_text())
    assert record["processes"] == 2 and record["parallel"].startswith(parallel)
    assert two.stdout.count("student_perplexity") == 1  # only rank 0 reports and writes
    a = load_file(str(tmp_path / "one" / "distill" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "distill" / "student" / "model.safetensors"))
    t = load_file(str(teacher / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = float((a["model.layers.0.mlp.up_proj.weight"] - t["model.layers.0.mlp.up_proj.weight"]).abs().max())
    assert diff < TOLERANCE < moved / 100, (diff, moved)
    rows = lambda run: [json.loads(x)["loss"] for x in (tmp_path / run / "distill" / "train.jsonl").read_text()  # noqa
                        .splitlines()]
    assert rows("two") == pytest.approx(rows("one"), rel=1e-4)  # the logged loss is the global batch's
