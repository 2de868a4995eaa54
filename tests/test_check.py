"""Budgets and baselines on synthetic manifests: pass, fail, within noise, not measured, regressions."""

import json

import pytest

from conftest import edgedistil
from edgedistil.check.budgets import compare_baseline, evaluate
from edgedistil.errors import EdgeError


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


DEVICE = """name = "Test phone"
soc = "SoC"
ram_gb = 4.0
ram_source = "spec sheet"
bandwidth_gbs = 10.0
bandwidth_basis = "measured"
bandwidth_source = "a benchmark"
"""


def test_device_projection_is_weight_bytes_over_bandwidth_and_labelled(tmp_path):
    from edgedistil.check.devices import device_names, load_device, project

    for name in device_names():  # every shipped device profile loads, with its sources
        d = load_device(name)
        assert d.ram_source.startswith("https://") and d.bandwidth_source.startswith("https://")
    (tmp_path / "d.toml").write_text(DEVICE)
    m = manifest(size_bytes=50_000_000)
    m["files"].append({"path": "tokenizer.json", "bytes": 10_000_000, "sha256": "0" * 64})  # not a weight
    est = project(m, load_device(tmp_path / "d.toml"))
    assert est["weight_bytes"] == 50_000_000 and est["decode_tokens_per_s"] == 200.0
    assert "estimate" in est["label"] and "not a measurement" in est["label"]
    rows = evaluate(m, {"projected_decode_tokens_per_s_min": 250}, estimate=est)
    row = status(rows, "projected_decode_tokens_per_s_min")
    assert row["status"] == "fail" and row["note"] == "estimate for Test phone" and row["unit"].endswith("(estimate)")
    no_device = status(evaluate(m, {"projected_decode_tokens_per_s_min": 1}), "projected_decode_tokens_per_s_min")
    assert no_device["status"] == "fail" and "device" in no_device["note"]


@pytest.mark.parametrize("edit, expect", [
    (('bandwidth_basis = "measured"', 'bandwidth_basis = "typical"'), "d.toml:6: bandwidth_basis must be one of"),
    (('ram_source = "spec sheet"\n', ""), "'ram_source' is missing"),
    (("bandwidth_gbs = 10.0", "bandwidth_gbs = 0.0"), "d.toml:5: 'bandwidth_gbs' must be > 0"),
    (("soc = ", "chip = "), "d.toml:2: unknown key 'chip'"),
])
def test_device_profile_errors_name_file_line_and_fix(tmp_path, edit, expect):
    from edgedistil.check.devices import load_device

    (tmp_path / "d.toml").write_text(DEVICE.replace(*edit))
    with pytest.raises(EdgeError) as e:
        load_device(tmp_path / "d.toml")
    assert expect in e.value.line() and "fix:" in e.value.line()


def test_cli_device_estimate_beside_measured(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest(size_bytes=50_000_000)))
    (tmp_path / "d.toml").write_text(DEVICE)
    budgets = tmp_path / "b.toml"
    budgets.write_text("[budgets]\nprojected_decode_tokens_per_s_min = 100\n")
    ok = edgedistil("check", tmp_path / "b", "--budgets", budgets, "--device", tmp_path / "d.toml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Test phone: 200 tok/s decode, estimate" in ok.stdout and "measured: 100 tok/s" in ok.stdout
    unknown = edgedistil("check", tmp_path / "b", "--budgets", budgets, "--device", "pixel-99")
    assert unknown.returncode == 2 and "unknown device 'pixel-99'" in unknown.stderr
