"""`edgedistil plan` on the tiny teacher: candidates scored before any training, and its input checks."""

import json

from conftest import TINY, edgedistil


def test_plan_scores_candidates_and_recommends_one(tmp_path):
    out = tmp_path / "run"
    proc = edgedistil("plan", "--config", TINY, "--out", out, "--layers", "1,2,3,4", "--ffn", "128,64",
                      "--min-speedup", "1.1", "--measure", "2", "--rounds", "2",
                      env={"EDGEDISTIL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "plan" / "plan.json").read_text())
    cands = record["candidates"]
    assert len(cands) == 8 and (out / "plan" / "plan.png").stat().st_size > 10_000
    by = {(c["layers"], c["ffn"]): c for c in cands}
    # the whole teacher is the 4-layer full-width candidate: same quality, no speedup
    assert by[(4, 128)]["quality_retained"] == 1.0 and by[(4, 128)]["projected_speedup"] == 1.0
    # fewer layers and narrower FFNs read fewer weight bytes, and are smaller at every precision
    assert by[(1, 64)]["projected_speedup"] > by[(2, 64)]["projected_speedup"] > by[(2, 128)]["projected_speedup"]
    assert by[(2, 64)]["size_mb"]["int8"] < by[(2, 128)]["size_mb"]["int8"] < by[(2, 128)]["size_mb"]["fp32"]
    best = record["recommended"]
    assert best["projected_speedup"] >= 1.1
    assert best["quality_retained"] == max(c["quality_retained"] for c in cands if c["projected_speedup"] >= 1.1)
    timed = [c for c in cands if c["measured_speedup"] is not None]
    assert len(timed) == 2 and all(c["measured_tokens_per_s"] > 0 for c in timed)
    assert record["measured"]["teacher_tokens_per_s"] > 0 and record["measured"]["rounds"] == 2
    # timed in rounds alternating with the teacher: the reported speedup is the median of the per-round ratios
    for c in timed:
        assert len(c["measured_ratios"]) == 2 and abs(c["measured_speedup"] - sum(c["measured_ratios"]) / 2) < 2e-3
    assert "Recommended at >= 1.1x" in proc.stdout


def test_plan_measure_above_the_picks_times_every_candidate(tmp_path):
    # the recommended, fastest, slowest and middle come first; a larger --measure times the rest in one run
    out = tmp_path / "run"
    proc = edgedistil("plan", "--config", TINY, "--out", out, "--layers", "1,2,3", "--ffn", "128,64",
                      "--min-speedup", "1.1", "--measure", "6", "--rounds", "1",
                      env={"EDGEDISTIL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cands = json.loads((out / "plan" / "plan.json").read_text())["candidates"]
    assert len(cands) == 6 and all(c["measured_tokens_per_s"] > 0 for c in cands)


def test_plan_projects_and_times_the_recipes_trimmed_head(tmp_path):
    # a head cut to 300 of the tiny vocabulary's 512 rows: every candidate reads fewer bytes a step, and is timed so
    def plan(out, *extra):
        proc = edgedistil("plan", "--config", TINY, "--out", out, "--layers", "1,2", "--ffn", "128",
                          "--min-speedup", "1.1", "--measure", "1", "--rounds", "1", *extra,
                          env={"EDGEDISTIL_CACHE": str(tmp_path / "cache")})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((out / "plan" / "plan.json").read_text())

    whole, trimmed = plan(tmp_path / "whole"), plan(tmp_path / "trimmed", "--set", "student.head_rows=300")
    assert whole["head_rows"] == 0 and trimmed["head_rows"] == 300
    for a, b in zip(whole["candidates"], trimmed["candidates"]):
        assert b["projected_speedup"] > a["projected_speedup"] and b["quality_retained"] == a["quality_retained"]
    assert [(c["measured_tokens_per_s"] or 0) > 0 for c in trimmed["candidates"]].count(True) == 1


def test_plan_refuses_bad_lists_before_writing(tmp_path):
    out = tmp_path / "run"
    proc = edgedistil("plan", "--config", TINY, "--out", out, "--layers", "2,x")
    assert proc.returncode == 2 and "--layers '2,x' is not a comma-separated list of integers" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()
    proc = edgedistil("plan", "--config", TINY, "--out", out, "--layers", "2,9", "--measure", "0",
                      env={"EDGEDISTIL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "outside the teacher's 1..4 layers" in proc.stderr
    assert not (out / "plan").exists()
