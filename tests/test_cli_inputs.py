"""The CLI checks every input before it writes anything, and `--set` overrides the recipe key by key."""

import json
import shutil

import pytest

from conftest import REPO, TINY, edgedistil
from test_cli_errors import assert_one_line_error


def test_set_overrides_the_recipe(tmp_path):
    out = tmp_path / "run"
    proc = edgedistil("distill", "--config", TINY, "--set", "distill.steps=2", "--set", "distill.temperature=1",
                      "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((out / "distill" / "train.jsonl").read_text().splitlines()) == 2  # tiny.toml says 30
    record = json.loads((out / "distill" / "record.json").read_text())
    assert record["config"]["temperature"] == 1.0 and record["config"]["steps"] == 2


@pytest.mark.parametrize("item, expect", [
    ("distill.temprature=1", "--set distill.temprature=1: unknown key 'temprature'; fix: did you mean 'temperature'?"),
    ("distil.alpha=0.5", "--set distil.alpha=0.5: unknown key 'distil'; fix: did you mean 'distill'?"),
    ("distill.steps=many", "--set distill.steps=many: 'steps' must be int, got str 'many'"),
    ("distill.alpha=3", "--set distill.alpha=3: 'alpha' must be in [0, 1], got 3.0; fix: change alpha on the command"),
    ("temperature", "--set 'temperature' is not section.key=value"),
])
def test_a_bad_set_is_one_line_and_writes_nothing(tmp_path, item, expect):
    proc = edgedistil("build", "--target", "web", "--config", TINY, "--set", item, "--out", tmp_path / "run")
    assert_one_line_error(proc, expect)
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_is_refused(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    for args in (("build", "--target", "web"), ("distill",), ("export",)):
        proc = edgedistil(*args, "--config", TINY, "--out", taken / "sub" if args[0] == "export" else taken)
        assert_one_line_error(proc, "is a file, not a folder", "pass --out a folder path")
    assert taken.read_text() == "mine\n"


@pytest.mark.parametrize("content, expect", [(b"", "empty"), (b"\xff\xfe bad bytes \x80\n" * 50, "UTF-8")])
def test_a_bad_corpus_fails_before_anything_is_written(tmp_path, content, expect):
    data = tmp_path / "corpus.txt"
    data.write_bytes(content)
    for verb in (("build", "--target", "web"), ("distill",)):
        out = tmp_path / f"run-{verb[0]}"
        proc = edgedistil(*verb, "--config", TINY, "--data", data, "--out", out)
        assert_one_line_error(proc, str(data), expect)
        assert not out.exists(), sorted(out.rglob("*"))  # not even the tiny teacher, the lock or the build log


def test_a_profile_that_cannot_build_fails_before_anything_is_written(tmp_path):
    web = tmp_path / "web.toml"  # the web bundle is the HF layout: a profile that names no file of it cannot build
    web.write_text("\n".join(ln for ln in (REPO / "targets" / "web.toml").read_text().splitlines()
                             if not ln.startswith("hf_onnx")))
    proc = edgedistil("build", "--target", web, "--config", TINY, "--out", tmp_path / "run")
    assert_one_line_error(proc, "profile names no hf_onnx files")
    proc = edgedistil("build", "--target", "ios", "--config", TINY, "--set", "export.max_len=512", "--set",
                      "export.prefill_len=16", "--out", tmp_path / "run")
    assert_one_line_error(proc, "exceeds the ios profile's max_len")
    assert not (tmp_path / "run").exists()


def test_the_smoke_recipe_passes_its_own_budgets_and_marks_the_skipped_ones(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run[0], copy)
    # no --budgets: the web profile's budgets, adjusted by models/tiny.toml's [check]
    proc = edgedistil("build", "--target", "web", "--config", TINY, "--out", copy)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    rows = {r["budget"]: r for r in json.loads((copy / "check.json").read_text())["budgets"]}
    assert rows["speedup_vs_teacher_min"]["status"] == "skip" and rows["speedup_vs_teacher_min"]["measured"] > 0
    assert "not for recipe tiny" in rows["decode_tokens_per_s_min"]["note"]
    assert rows["top1_agreement_min"]["limit"] == 0.8 and rows["top1_agreement_min"]["status"] == "pass"
    assert rows["size_mb_max"]["limit"] == 100.0  # a budget the recipe leaves alone keeps the profile's limit
    assert "SKIP (not for recipe tiny)" in proc.stdout


def test_init_writes_the_set_keys_into_the_copy(tmp_path):
    proc = edgedistil("init", "--config", TINY, "--set", "distill.steps=7", "--set", "quantize.rounding=nearest",
                      "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from edgedistil.config import load_recipe

    written = load_recipe(tmp_path / "edgedistil.toml")
    assert written.distill.steps == 7 and written.quantize.rounding == "nearest"
    assert written.section("data") == load_recipe(TINY).section("data")
    assert "# The smoke model is a 2-layer" in (tmp_path / "edgedistil.toml").read_text()  # comments kept
