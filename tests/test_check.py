"""Budgets and baselines on synthetic manifests: pass, fail, within noise, not measured, regressions."""

import json

from conftest import edgedistil
from edgedistil.check.budgets import compare_baseline, evaluate


def manifest(decode=100.0, spread=(95.0, 105.0), size_bytes=50_000_000, top1=0.99, bench=True):
    return {
        "schema_version": 1, "target": "web",
        "files": [{"path": "model.onnx", "bytes": size_bytes, "sha256": "0" * 64}],
        "bench": {"decode_tokens_per_s": decode, "ttft_ms": 20.0, "peak_memory_mb": 200.0,
                  "prefill_tokens_per_s": 1000.0, "spread": {"decode_tokens_per_s": list(spread)}} if bench else
        {"value": None, "reason": "not measured"},
        "fidelity": {"top1_agreement": top1, "kl_mean": 0.01},
        "quality": {"quality_retained": 0.8}, "speedup_vs_teacher": 4.0,
    }


def status(rows, budget):
    return next(r for r in rows if r["budget"] == budget)


def test_pass_fail_and_margin():
    rows = evaluate(manifest(), {"decode_tokens_per_s_min": 50, "size_mb_max": 40, "top1_agreement_min": 0.98})
    assert status(rows, "decode_tokens_per_s_min")["status"] == "pass"
    assert status(rows, "decode_tokens_per_s_min")["margin"] == 50
    size = status(rows, "size_mb_max")
    assert size["status"] == "fail" and size["margin"] == -10


def test_limit_inside_the_spread_is_within_noise():
    rows = evaluate(manifest(decode=100, spread=(95, 105)), {"decode_tokens_per_s_min": 98})
    row = status(rows, "decode_tokens_per_s_min")
    assert row["note"] == "within noise" and row["status"] == "fail"
    assert status(evaluate(manifest(), {"decode_tokens_per_s_min": 98}, noise_passes=True),
                  "decode_tokens_per_s_min")["status"] == "pass"


def test_unmeasured_figure_fails():
    row = status(evaluate(manifest(bench=False), {"decode_tokens_per_s_min": 1}), "decode_tokens_per_s_min")
    assert row["status"] == "fail" and row["note"] == "not measured"


def test_layers_left_float_by_mistake_are_gated():
    m = manifest()
    m["quantization"] = {"method": "int8", "unintended_float_layers": 2}
    assert status(evaluate(m, {"unintended_float_layers_max": 0}), "unintended_float_layers_max")["status"] == "fail"
    m["quantization"]["unintended_float_layers"] = 0
    assert status(evaluate(m, {"unintended_float_layers_max": 0}), "unintended_float_layers_max")["status"] == "pass"


def test_baseline_regression_follows_direction():
    old = manifest(decode=100, size_bytes=50_000_000)
    slower = compare_baseline(manifest(decode=80, size_bytes=50_000_000), old, max_regression_pct=10)
    assert status(slower, "decode_tokens_per_s vs baseline")["status"] == "fail"
    faster_bigger = compare_baseline(manifest(decode=130, size_bytes=54_000_000), old, max_regression_pct=10)
    assert status(faster_bigger, "decode_tokens_per_s vs baseline")["status"] == "pass"
    assert status(faster_bigger, "size_mb vs baseline")["status"] == "pass"  # +8% < 10%
    bigger = compare_baseline(manifest(size_bytes=60_000_000), old, max_regression_pct=10)
    assert status(bigger, "size_mb vs baseline")["status"] == "fail"


def test_cli_baseline_exit_codes(tmp_path):
    for name, m in (("old", manifest(decode=100)), ("new", manifest(decode=70)), ("same", manifest(decode=99))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(m))
    budgets = tmp_path / "b.toml"
    budgets.write_text("[budgets]\nsize_mb_max = 100\n")
    ok = edgedistil("check", tmp_path / "same", "--budgets", budgets, "--baseline", tmp_path / "old")
    assert ok.returncode == 0, ok.stdout
    bad = edgedistil("check", tmp_path / "new", "--budgets", budgets, "--baseline", tmp_path / "old", "--format",
                     "json")
    assert bad.returncode == 1
    rows = json.loads(bad.stdout)["budgets"]
    assert status(rows, "decode_tokens_per_s vs baseline")["note"].startswith("-30.0%")
