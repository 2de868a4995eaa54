"""The whole chain on the tiny recipe, through the real CLI: artifacts, records, manifest, caching, verify, check."""

import json
import shutil

import numpy as np
import torch

from conftest import TINY, TINY_BUDGETS, WEB_METHOD, edgedistil
from edgedistil.bench.web import MIN_REPEATS

MANIFEST_KEYS = {"schema_version", "target", "files", "graphs", "kv_cache", "quantization", "fidelity", "bench",
                 "teacher_bench", "quality"}


def manifest_of(out):
    return json.loads((out / "dist" / "web" / "manifest.json").read_text())


def test_every_stage_writes_artifacts_and_a_record(tiny_run):
    out, _ = tiny_run
    for stage in ("distill", "export/student-hf", "export/teacher-hf", f"quantize/{WEB_METHOD}-hf", "bench"):
        record = json.loads((out / stage / "record.json").read_text())
        assert record["stage"] == stage.split("/")[0]
    for name in ("distill", "export-student-hf", "export-teacher-hf", f"quantize-{WEB_METHOD}-hf", "bench",
                 "convert-web"):
        assert json.loads((out / "stages" / f"{name}.json").read_text())["key"]
    assert (out / "distill" / "student" / "model.safetensors").is_file()
    assert len((out / "distill" / "train.jsonl").read_text().splitlines()) == 30  # one line per step of tiny.toml
    for stage in ("export/student-hf", "export/teacher-hf", f"quantize/{WEB_METHOD}-hf"):
        assert (out / stage / "model.onnx").is_file() and (out / stage / "verify.json").is_file()
    assert not list(out.rglob("*.tmp")), "no temp folders may be left behind"


def test_distillation_lowers_the_loss(tiny_run):
    out, _ = tiny_run
    curve = [json.loads(line) for line in (out / "distill" / "train.jsonl").read_text().splitlines()]
    first, last = np.mean([r["kl"] for r in curve[:5]]), np.mean([r["kl"] for r in curve[-5:]])
    assert last < first, (first, last)


def test_manifest_has_the_contract_keys_and_measured_numbers(tiny_run):
    out, _ = tiny_run
    m = manifest_of(out)
    assert MANIFEST_KEYS <= set(m) and m["target"] == "web" and m["schema_version"] == 1
    assert {g["name"] for g in m["graphs"]} == {"prefill", "decode"}
    decode = next(g for g in m["graphs"] if g["name"] == "decode")
    names = {i["name"]: i for i in decode["inputs"]}
    # the Hugging Face layout's graph, which our module and Transformers.js both run
    assert names["input_ids"]["dtype"] == names["attention_mask"]["dtype"] == "int64"
    assert names["input_ids"]["shape"] == [1, 1]
    kv = m["kv_cache"]
    assert names["past_key_values.0.key"]["shape"] == [1, kv["kv_heads"], 0, kv["head_dim"]]
    assert kv["max_len"] == 128 and kv["layers"] == 2 and kv["layout"] == "hf"
    for key in ("max_abs_diff", "top1_agreement", "kl_mean"):
        assert isinstance(m["fidelity"][key], float)
    for who in ("bench", "teacher_bench"):
        for key in ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "peak_memory_mb"):
            assert m[who][key] > 0, (who, key)
        # the recipe's 3 repeats, raised to the browser bench's least number of timed generations, in each of 2 pages
        assert m[who]["repeats"] == MIN_REPEATS == 5 and m[who]["pages"] == 2 and "onnxruntime" in m[who]["runtime"]
    for key in ("student_perplexity", "teacher_perplexity", "top1_agreement_with_teacher"):
        assert m["quality"][key] > 0
    paths = {f["path"] for f in m["files"]}
    assert {"onnx/model_quantized.onnx", "tokenizer.json", "USAGE.md"} <= paths


def test_fp32_export_matches_pytorch(tiny_run):
    out, _ = tiny_run
    for role in ("student", "teacher"):
        fid = json.loads((out / "export" / f"{role}-hf" / "verify.json").read_text())
        assert fid["max_abs_diff"] < 1e-3 and fid["top1_agreement"] == 1.0, (role, fid)
        assert fid["greedy_tokens_matching"] == fid["greedy_tokens"]


def test_student_loads_in_transformers_with_the_same_logits(tiny_run):
    from transformers import AutoModelForCausalLM

    from edgedistil.model import load_hf_folder

    student_dir = tiny_run[0] / "distill" / "student"
    hf = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    ours = load_hf_folder(student_dir).eval()
    ids = torch.randint(0, hf.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids), atol=1e-4)
    assert hf.config.num_hidden_layers == 2


def test_rebuild_reuses_every_stage(tiny_run, tmp_path):
    out, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    proc = edgedistil("build", "--target", "web", "--config", TINY, "--budgets", TINY_BUDGETS, "--out", copy)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "running" not in proc.stderr
    for stage in ("distill", "export[student-hf]", "export[teacher-hf]", f"quantize[{WEB_METHOD}-hf]", "bench", "convert[web]"):
        assert f"[{stage}] cached" in proc.stderr


def test_run_folders_share_one_export_of_the_teacher(tiny_run, tmp_path, monkeypatch):
    """The teacher's export depends on the teacher, the layout and the held-out text only: a second run folder links
    the files the first one exported into the cache instead of exporting again."""
    import edgedistil.export.onnx as onnx_export
    from edgedistil.build import Run, export_stage
    from edgedistil.config import load_recipe

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    exported = []
    real = onnx_export.run_export
    monkeypatch.setattr(onnx_export, "run_export", lambda *a, **k: exported.append(k["out_dir"]) or real(*a, **k))
    stage, records = export_stage("teacher", cache="hf"), []
    for name in ("a", "b"):
        shutil.copytree(tiny_run[0], tmp_path / name, ignore=shutil.ignore_patterns("export", "quantize", "dist"))
        run = Run(out=tmp_path / name, recipe=load_recipe(TINY), log=lambda *_: None)
        records.append(stage.run(run, tmp_path / name / "export" / "teacher-hf"))
    assert len(exported) == 1 and exported[0].parent == tmp_path / "cache" / "teacher-exports"
    a, b = (tmp_path / n / "export" / "teacher-hf" / "model.onnx" for n in "ab")
    assert a.stat().st_ino == b.stat().st_ino == (exported[0] / "model.onnx").stat().st_ino
    assert records[0] == records[1] and records[0]["role"] == "teacher"


def test_verify_accepts_the_bundle_and_catches_tampering(tiny_run, tmp_path):
    bundle = tmp_path / "web"
    shutil.copytree(tiny_run[0] / "dist" / "web", bundle)
    ok = edgedistil("verify", bundle)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    with open(bundle / "tokenizer.json", "r+b") as f:
        f.seek(10)
        f.write(b"X")
    bad = edgedistil("verify", bundle)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "does not match its sha256" in bad.stderr


def test_check_passes_and_fails_on_budgets(tiny_run, tmp_path):
    bundle = tiny_run[0] / "dist" / "web"
    loose = tmp_path / "loose.toml"
    loose.write_text("[budgets]\ndecode_tokens_per_s_min = 1\nsize_mb_max = 100\n")
    ok = edgedistil("check", bundle, "--budgets", loose, "--format", "json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["passed"] is True
    tight = tmp_path / "tight.toml"
    tight.write_text("[budgets]\ndecode_tokens_per_s_min = 1e9\nsize_mb_max = 100\n")
    summary = tmp_path / "summary.md"
    bad = edgedistil("check", bundle, "--budgets", tight, "--format", "markdown",
                     env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert bad.returncode == 1
    assert "| decode_tokens_per_s_min |" in bad.stdout and "FAIL" in bad.stdout
    assert "FAIL" in summary.read_text()


def test_bench_verb_on_a_bundle_prints_json(tiny_run, tmp_path):
    proc = edgedistil("bench", "--target", "web", "--bundle", tiny_run[0] / "dist" / "web", "--config", TINY,
                      "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    assert record["student"]["decode_tokens_per_s"] > 0 and record["repeats"] == MIN_REPEATS
    assert (tmp_path / "bench.json").is_file()


def test_force_reruns_a_stage_and_everything_after_it(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run[0], copy)
    proc = edgedistil("build", "--target", "web", "--config", TINY, "--budgets", TINY_BUDGETS, "--out", copy,
                      "--force", "quantize")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("distill", "export[student-hf]", "export[teacher-hf]"):
        assert f"[{stage}] cached" in proc.stderr
    for stage in (f"quantize[{WEB_METHOD}-hf]", "bench", "convert[web]"):
        assert f"[{stage}] running" in proc.stderr
    assert f"[quantize[{WEB_METHOD}-hf]] running" in (copy / "build.log").read_text()


def test_a_second_build_into_a_running_folder_is_refused(tmp_path):
    from edgedistil.build import build_lock

    with build_lock(tmp_path):
        proc = edgedistil("build", "--target", "web", "--config", TINY, "--out", tmp_path)
    assert proc.returncode == 2
    assert "another edgedistil build is running" in proc.stderr and f"pid {__import__('os').getpid()}" in proc.stderr
    assert not (tmp_path / "distill").exists()


def test_repeated_targets_build_once(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run[0], copy)
    proc = edgedistil("build", "--target", "web", "--target", "web", "--config", TINY, "--budgets", TINY_BUDGETS,
                      "--out", copy)
    assert proc.returncode == 0 and proc.stdout.count("bundle: ") == 1


def test_eval_stage_reaches_the_manifest_report_and_check(tiny_run, tmp_path):
    out, _ = tiny_run
    record = json.loads((out / "eval" / "record.json").read_text())
    full = json.loads((out / "eval" / "eval.json").read_text())
    assert record["stage"] == "eval" and record["items"] == {t: 3 for t in (
        "arc_challenge", "arc_easy", "hellaswag", "piqa", "winogrande")}  # the shipped smoke benchmarks
    assert len(full["behaviour"]["answers"]) == full["behaviour"]["prompts"] >= 50 and "answers" not in \
        record["behaviour"]
    ev = json.loads((out / "dist" / "web" / "manifest.json").read_text())["evaluation"]
    mean = full["benchmarks"]["mean"]
    assert ev["benchmark_margin_kept"] == mean["margin_kept"] and ev["benchmark_mean"]["student"] == mean["student"]
    assert ev["degenerate_answers"] == full["behaviour"]["student"]["degenerate"]
    report = edgedistil("report", out, "--out", tmp_path / "report")
    assert report.returncode == 0 and "| mean |" in (tmp_path / "report" / "summary.md").read_text()
    # the eval figures are budgets like any other: a degenerate share above the limit fails the check
    bundle = out / "dist" / "web"
    limit = ev["degenerate_answers"] - 0.01
    tight = tmp_path / "tight.toml"
    tight.write_text(f"[budgets]\ndegenerate_answers_max = {limit}\nrouge_l_vs_teacher_min = 0\n")
    proc = edgedistil("check", bundle, "--budgets", tight, "--format", "json")
    rows = {r["budget"]: r["status"] for r in json.loads(proc.stdout)["budgets"]}
    assert proc.returncode == 1 and rows == {"degenerate_answers_max": "fail", "rouge_l_vs_teacher_min": "pass"}
