"""Bad input: one clear line on stderr, a non-zero exit, and no partial bundle."""

import pytest

from conftest import TINY, edgedistil
from edgedistil.config import TARGETS


def assert_one_line_error(proc, *needles, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("edgedistil: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_missing_teacher_path(tmp_path):
    out = tmp_path / "run"
    proc = edgedistil("build", "--target", "web", "--config", TINY, "--teacher", tmp_path / "nope", "--out", out)
    assert_one_line_error(proc, "teacher path", "does not exist", "--teacher PATH")
    assert not (out / "dist").exists()


def test_unsupported_teacher_architecture(tmp_path):
    teacher = tmp_path / "gpt2"
    teacher.mkdir()
    (teacher / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 10}')
    proc = edgedistil("distill", "--config", TINY, "--teacher", teacher, "--out", tmp_path / "run")
    assert_one_line_error(proc, "gpt2")
    assert not (tmp_path / "run" / "distill").exists()


@pytest.mark.parametrize("target", ["wbe", "desktop"])
def test_unknown_target(tmp_path, target):
    proc = edgedistil("build", "--target", target, "--config", TINY, "--out", tmp_path)
    assert_one_line_error(proc, f"unknown target '{target}'", ", ".join(TARGETS))  # the registry: targets/*.toml
    assert not (tmp_path / "dist").exists()


def test_config_with_unknown_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[distill]\ntemprature = 2.0\n")
    proc = edgedistil("build", "--target", "web", "--config", bad, "--out", tmp_path / "run")
    assert_one_line_error(proc, "unknown key 'temprature'", "did you mean 'temperature'")
    assert not (tmp_path / "run").exists()


def test_budgets_that_are_not_numbers(tmp_path):
    bad = tmp_path / "budgets.toml"
    bad.write_text("[budgets]\nsize_mb_max = \"small\"\n")
    proc = edgedistil("build", "--target", "web", "--config", TINY, "--budgets", bad, "--out", tmp_path / "run")
    assert_one_line_error(proc, "'size_mb_max' must be a number")
    assert not (tmp_path / "run").exists()


def test_check_on_a_missing_bundle(tmp_path):
    proc = edgedistil("check", tmp_path / "nothing")
    assert_one_line_error(proc, "does not exist")


def test_stage_verb_without_its_input(tmp_path):
    proc = edgedistil("quantize", "--config", TINY, "--out", tmp_path)
    assert_one_line_error(proc, "does not exist", "run the stage that writes it first")


def test_corpus_smaller_than_one_block(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("a b c\n")
    proc = edgedistil("distill", "--config", TINY, "--data", small, "--out", tmp_path / "run")
    assert_one_line_error(proc, "tokens, fewer than")
    assert not (tmp_path / "run" / "distill").exists()


def test_help_lists_every_verb():
    proc = edgedistil("--help")
    assert proc.returncode == 0
    for verb in ("init", "distill", "export", "quantize", "convert", "bench", "check", "report", "verify", "build"):
        assert f"  {verb} " in proc.stdout, verb
