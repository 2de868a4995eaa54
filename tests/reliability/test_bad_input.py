"""Bad input, tried systematically through the real CLI: one clear line, exit code 2, no partial artifact.

Each case is a row of CASES; docs/reliability.md is generated from the same rows (test_reliability_doc_is_current
fails when they drift; `EDGEDISTIL_WRITE_DOCS=1 pytest tests/reliability` rewrites it).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, TINY, edgedistil

DOC = REPO / "docs" / "reliability.md"


@dataclass
class Case:
    id: str
    area: str
    what: str
    setup: Callable[[Path, dict], list]  # (tmp folder, shared fixtures) -> CLI argv
    expect: str  # must appear in the one error line
    absent: str = "run/dist"  # a path under tmp that must not exist afterwards


def recipe(tmp: Path, text: str) -> Path:
    p = tmp / "recipe.toml"
    p.write_text(text)
    return p


def build(tmp: Path, *extra) -> list:
    return ["build", "--target", "web", "--config", TINY, "--out", tmp / "run", *extra]


def distill(tmp: Path, *extra) -> list:
    return ["distill", "--config", TINY, "--out", tmp / "run", *extra]


def teacher_copy(tmp: Path, fx: dict) -> Path:
    dest = tmp / "teacher"
    shutil.copytree(fx["teacher"], dest)
    return dest


def truncated_teacher(tmp: Path, fx: dict) -> list:
    t = teacher_copy(tmp, fx)
    weights = t / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return distill(tmp, "--teacher", t)


def pickle_only_teacher(tmp: Path, fx: dict) -> list:
    t = teacher_copy(tmp, fx)
    (t / "model.safetensors").rename(t / "pytorch_model.bin")
    return distill(tmp, "--teacher", t)


def config_weights_mismatch(tmp: Path, fx: dict) -> list:
    import json

    t = teacher_copy(tmp, fx)
    cfg = json.loads((t / "config.json").read_text())
    cfg["vocab_size"] = 100  # the weights say 512
    (t / "config.json").write_text(json.dumps(cfg))
    return distill(tmp, "--teacher", t)


def kd_tokenizer_mismatch(tmp: Path, fx: dict) -> list:
    from edgedistil.sources import load_corpus, tiny_teacher

    other = tiny_teacher(tmp / "student-src", load_corpus("tiny").text, vocab_size=300)  # another tokenizer
    text = (REPO / "models/tiny.toml").read_text().replace("[student]\n", f"[student]\nsource = \"{other}\"\n")
    return ["distill", "--config", recipe(tmp, text), "--out", tmp / "run"]


def gpt2_teacher(tmp: Path, fx: dict) -> list:
    t = teacher_copy(tmp, fx)
    (t / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 512, "n_layer": 2}')
    return distill(tmp, "--teacher", t)


def bundle_copy(tmp: Path, fx: dict) -> Path:
    dest = tmp / "bundle"
    shutil.copytree(fx["run"] / "dist" / "web", dest)
    return dest


def tampered_bundle(tmp: Path, fx: dict) -> list:
    b = bundle_copy(tmp, fx)
    with open(b / "onnx" / "model_quantized.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    return ["verify", b]


def truncated_bundle(tmp: Path, fx: dict) -> list:
    b = bundle_copy(tmp, fx)
    m = b / "onnx" / "model_quantized.onnx"
    m.write_bytes(m.read_bytes()[:1000])
    return ["verify", b]


def extra_file_bundle(tmp: Path, fx: dict) -> list:
    b = bundle_copy(tmp, fx)
    (b / "evil.js").write_text("alert(1)")
    return ["verify", b]


def manifest_io_mismatch(tmp: Path, fx: dict) -> list:
    import json

    b = bundle_copy(tmp, fx)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["graphs"][-1]["inputs"][0]["dtype"] = "int32"  # the model takes int64 ids
    (b / "manifest.json").write_text(json.dumps(manifest))
    return ["verify", b]


def corrupt_onnx(tmp: Path, fx: dict) -> list:
    bad = tmp / "model.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    return ["bench", "--target", "web", "--model", bad, "--config", TINY, "--out", tmp / "run"]


def text_file(tmp: Path, data: bytes) -> Path:
    p = tmp / "corpus.txt"
    p.write_bytes(data)
    return p


CASES = [
    Case("recipe-not-toml", "config", "a recipe that is not TOML",
         lambda t, fx: build(t)[:4] + [recipe(t, "[distill\nalpha = 1"), "--out", t / "run"], "is not valid TOML"),
    Case("recipe-unknown-key", "config", "an unknown key, with the nearest valid key suggested",
         lambda t, fx: build(t)[:4] + [recipe(t, "[distill]\ntemprature = 2.0\n"), "--out", t / "run"],
         "did you mean 'temperature'"),
    Case("recipe-unknown-section", "config", "an unknown section",
         lambda t, fx: build(t)[:4] + [recipe(t, "[distil]\nalpha = 0.5\n"), "--out", t / "run"],
         "did you mean 'distill'"),
    Case("recipe-wrong-type", "config", "a value of the wrong type",
         lambda t, fx: build(t)[:4] + [recipe(t, "[distill]\nsteps = \"many\"\n"), "--out", t / "run"],
         "'steps' must be int"),
    Case("recipe-temperature-zero", "config", "temperature T <= 0",
         lambda t, fx: build(t)[:4] + [recipe(t, "[distill]\ntemperature = 0\n"), "--out", t / "run"],
         "'temperature' must be > 0"),
    Case("recipe-alpha-range", "config", "alpha outside [0, 1]",
         lambda t, fx: build(t)[:4] + [recipe(t, "[distill]\nalpha = 1.5\n"), "--out", t / "run"],
         "'alpha' must be in [0, 1]"),
    Case("recipe-too-many-layers", "config", "more student layers than the teacher has",
         lambda t, fx: build(t)[:4] + [recipe(t, (REPO / "models/tiny.toml").read_text().replace(
             "layers = 2", "layers = 9")), "--out", t / "run"], "but the teacher has only 4"),
    Case("student-wider-than-teacher", "config", "the built-in recipe's FFN (1024) for a teacher with FFN 128",
         lambda t, fx: ["build", "--target", "web", "--teacher", teacher_copy(t, fx), "--set", "student.layers=2",
                        "--out", t / "run"], "wider than the teacher's 128", absent="run"),
    Case("recipe-missing", "config", "a recipe path that does not exist",
         lambda t, fx: ["build", "--target", "web", "--config", t / "nope.toml", "--out", t / "run"],
         "does not exist"),
    Case("teacher-missing", "paths", "a missing teacher path",
         lambda t, fx: build(t, "--teacher", t / "no-such-teacher"), "--teacher PATH"),
    Case("data-missing", "paths", "a missing corpus path",
         lambda t, fx: distill(t, "--data", t / "no-such.txt"), "does not exist", "run/distill"),
    Case("data-empty", "paths", "an empty corpus",
         lambda t, fx: distill(t, "--data", text_file(t, b"")), "empty", "run/distill"),
    Case("data-one-block", "paths", "a corpus smaller than one training block",
         lambda t, fx: distill(t, "--data", text_file(t, b"a b c\nd e f\n")), "fewer than", "run/distill"),
    Case("data-not-utf8", "paths", "a text file that is not UTF-8",
         lambda t, fx: distill(t, "--data", text_file(t, "caf\u00e9 cr\u00e8me\n".encode("latin-1") * 50)),
         "UTF-8", "run/distill"),
    Case("teacher-config-mismatch", "models", "a config.json that does not match its weights",
         config_weights_mismatch, "has shape", "run/distill"),
    Case("kd-tokenizer-mismatch", "models", "a student whose tokenizer differs from the teacher's (response KD)",
         kd_tokenizer_mismatch, "sequence", "run/distill"),
    Case("teacher-unsupported", "models", "an unsupported architecture", gpt2_teacher, "gpt2", "run/distill"),
    Case("teacher-truncated", "models", "a truncated safetensors file", truncated_teacher, "model.safetensors",
         "run/distill"),
    Case("teacher-pickle-only", "models", "weights only as a pickle (pytorch_model.bin): refused, never unpickled",
         pickle_only_teacher, "safetensors", "run/distill"),
    Case("onnx-corrupt", "models", "a corrupt ONNX file", corrupt_onnx, "cannot load", "run/bench.json"),
    Case("bundle-tampered", "models", "a bundle file changed after the build", tampered_bundle,
         "does not match its sha256"),
    Case("bundle-truncated", "models", "a bundle file cut short", truncated_bundle, "does not match its sha256"),
    Case("bundle-extra-file", "models", "a file slipped into a bundle", extra_file_bundle,
         "files the manifest does not list"),
    Case("bundle-io-mismatch", "models", "a manifest whose I/O differs from the model's", manifest_io_mismatch,
         "the manifest says"),
    Case("bundle-missing", "models", "verify on a folder that does not exist",
         lambda t, fx: ["verify", t / "nothing"], "does not exist"),
    Case("target-unknown", "targets and budgets", "an unknown target, with the nearest one suggested",
         lambda t, fx: ["build", "--target", "wbe", "--config", TINY, "--out", t / "run"], "did you mean 'web'"),
    Case("budgets-not-numbers", "targets and budgets", "a budgets file with a value that is not a number",
         lambda t, fx: build(t, "--budgets", recipe(t, "[budgets]\nsize_mb_max = \"small\"\n")), "must be a number"),
    Case("budgets-unknown-name", "targets and budgets", "a budgets file with an unknown budget name",
         lambda t, fx: build(t, "--budgets", recipe(t, "[budgets]\ndecode_tps_min = 3\n")),
         "unknown key 'decode_tps_min'"),
    Case("budgets-no-table", "targets and budgets", "a budgets file without a [budgets] table",
         lambda t, fx: ["check", fx["run"] / "dist" / "web", "--budgets", recipe(t, "size_mb_max = 3\n")],
         "no [budgets] table"),
    Case("stage-without-input", "paths", "a stage run before the stage it needs",
         lambda t, fx: ["quantize", "--config", TINY, "--out", t / "run"], "run the stage that writes it first",
         "run/quantize"),
    Case("bench-both-inputs", "targets and budgets", "bench given neither --bundle nor --model",
         lambda t, fx: ["bench", "--target", "web", "--config", TINY, "--out", t / "run"],
         "exactly one of --bundle DIR or --model FILE"),
]


@pytest.fixture(scope="module")
def fixtures(tiny_run, tmp_path_factory):
    from edgedistil.sources import load_corpus, tiny_teacher

    teacher = tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", load_corpus("tiny").text)
    return {"teacher": teacher, "run": tiny_run[0]}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_line(case, fixtures, tmp_path):
    proc = edgedistil(*case.setup(tmp_path, fixtures))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("edgedistil: error: ") and "; fix: " in lines[-1], lines[-1]
    assert case.expect in lines[-1], lines[-1]
    assert not (tmp_path / case.absent).exists(), f"{case.absent} was left behind"
    assert not list(tmp_path.rglob("*.tmp")), "temp files left behind"


def render_doc() -> str:
    rows = "\n".join(f"| {c.area} | `{c.id}` | {c.what} | exit 2; the error line names it (`{c.expect}`); "
                     f"no partial artifact |" for c in CASES)
    return ("# Reliability: bad input tried\n\n"
            "Generated from `tests/reliability/test_bad_input.py` (each row is a test run through the real CLI).\n"
            "Rewrite with `EDGEDISTIL_WRITE_DOCS=1 python -m pytest tests/reliability`.\n\n"
            f"{len(CASES)} cases.\n\n| area | case | input | outcome |\n|---|---|---|---|\n{rows}\n")


def test_reliability_doc_is_current():
    if os.environ.get("EDGEDISTIL_WRITE_DOCS"):
        DOC.write_text(render_doc())
    assert DOC.is_file() and DOC.read_text() == render_doc(), "run EDGEDISTIL_WRITE_DOCS=1 pytest tests/reliability"
