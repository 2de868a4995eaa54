"""Android (LiteRT): the tiny recipe's whole android build through the CLI (signatures and names read back from the
file, fidelity per variant, host bench at 1/2/4 threads, verify, check), the two LiteRT bindings against PyTorch,
the converter's memory pre-flight, and the adb path against captured benchmark_model output."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_BUDGETS, edgedistil
from edgedistil.bench.android_device import (benchmark_command, parse_benchmark_output, parse_devices,
                                             pick_device)
from edgedistil.convert.android import (AndroidOptions, converter_peak_bytes, convert_tflite, preflight_memory)
from edgedistil.decoding import greedy
from edgedistil.errors import EdgeError
from edgedistil.model import EdgeConfig, EdgeLM
from edgedistil.runtimes.litert import LiteRtLM, ResidentLoop, read_signatures
from edgedistil.runtimes.litertlm import LiteRtLmRuntime
from edgedistil.runtimes.torch_step import TorchLM

FIXTURES = Path(__file__).parent / "fixtures" / "android"


@pytest.fixture(scope="module")
def android_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("android-run")
    proc = edgedistil("build", "--target", "android", "--config", TINY, "--budgets", TINY_BUDGETS, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return out, proc


def test_bundle_has_both_signatures_with_names_read_back_from_the_file(android_run):
    out, _ = android_run
    bundle = out / "dist" / "android"
    assert sorted(p.name for p in bundle.iterdir()) == ["USAGE.md", "generation_config.json", "manifest.json",
                                                         "model.litertlm", "model.tflite", "tokenizer.json",
                                                         "tokenizer_config.json"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    signatures = read_signatures(bundle / "model.tflite")
    assert sorted(signatures) == ["decode", "prefill_16"]  # LiteRT-LM's names: the prefill length in the name
    graphs = {g["signature"]: g for g in manifest["graphs"]}
    cache = manifest["kv_cache"]
    layer = [1, cache["kv_heads"], cache["max_len"], cache["head_dim"]]  # C on dimension 2, where LiteRT-LM reads it
    caches = {f"kv_cache_{kind}_{i}" for i in range(cache["layers"]) for kind in "kv"}
    vocab = json.loads((out / "distill" / "student" / "config.json").read_text())["vocab_size"]
    for name, t in (("prefill_16", 16), ("decode", 1)):
        assert graphs[name]["inputs"] == signatures[name]["inputs"]
        assert graphs[name]["outputs"] == signatures[name]["outputs"]
        ins = {d["name"]: d for d in signatures[name]["inputs"]}
        outs = {d["name"]: d for d in signatures[name]["outputs"]}
        assert set(ins) == {"tokens", "input_pos", *caches} and set(outs) == {"logits", *caches}
        assert ins["tokens"]["shape"] == [1, t] and ins["tokens"]["dtype"] == "int32"
        assert ins["input_pos"]["shape"] == [t] and ins["input_pos"]["dtype"] == "int32"
        assert all(ins[c]["shape"] == outs[c]["shape"] == layer for c in caches)
        assert outs["logits"]["shape"] == [1, t, vocab]  # 3-D on both signatures
    assert manifest["quantization"]["method"] == "weight_only_int8"
    # the .litertlm packs the very .tflite shipped beside it, and its metadata names the teacher's stop token
    assert manifest["litertlm"]["tflite_sha256"] == next(f["sha256"] for f in manifest["files"]
                                                         if f["path"] == "model.tflite")
    assert manifest["litertlm"]["stop_tokens"] == [0]  # the tiny teacher's <|endoftext|>
    assert "type: TOP_P" in manifest["litertlm"]["llm_metadata"] and "k: 1" in manifest["litertlm"]["llm_metadata"]
    usage = (bundle / "USAGE.md").read_text()
    assert "createConversation" in usage and "sendMessageAsync" in usage
    assert 'implementation("com.google.ai.edge.litertlm:litertlm-android:0.18.0")' in usage


def test_every_variant_is_measured_and_fp32_matches_pytorch(android_run):
    out, _ = android_run
    record = json.loads((out / "litert" / "student" / "record.json").read_text())
    assert set(record["variants"]) == {"fp32", "fp16", "dynamic_int8", "weight_only_int8"}
    fp32 = record["variants"]["fp32"]["fidelity"]
    assert fp32["greedy_tokens_matching"] == fp32["greedy_tokens"] == 64
    assert fp32["top1_agreement"] == 1.0 and fp32["kl_mean"] < 1e-6 and fp32["meets_floors"]
    # fp32 and the shipped variant were also run through LiteRT-LM itself: fp32 says what PyTorch says
    assert sorted(v for v, r in record["variants"].items() if "litertlm" in r) == ["fp32", "weight_only_int8"]
    check = record["variants"]["fp32"]["litertlm"]["check"]
    kinds = [p["kind"] for p in check["prompts"]]
    assert kinds == ["held-out text, shorter than one prefill chunk", "held-out text, longer than one prefill chunk"]
    assert check["prompts"][1]["prompt_tokens"] > 16  # more than one prefill_16 chunk
    for p in check["prompts"]:
        assert p["runtime_tokenizes_alike"] and p["runtime_prompt_tokens"] == p["prompt_tokens"]
        assert p["text_equal"] and p["tokens_matching"] == p["reference_tokens"] > 0
    sizes = {v: r["bytes"] for v, r in record["variants"].items()}
    assert sizes["dynamic_int8"] < sizes["weight_only_int8"] < sizes["fp16"] < sizes["fp32"]
    # read back from each file: every matrix once (the tied embedding/LM head shared), in the variant's types
    layers = json.loads((out / "distill" / "student" / "config.json").read_text())["num_hidden_layers"]
    types = {v: r["weight_types"] for v, r in record["variants"].items()}
    assert types["fp32"] == {"float32": 7 * layers + 1}
    assert types["dynamic_int8"] == {"int8": 7 * layers + 1}
    # weight-only int8 keeps the vocabulary matrix and every down_proj and v_proj fp16, nothing left fp32
    assert types["weight_only_int8"] == {"float16": 2 * layers + 1, "int8": 5 * layers}
    assert record["variants"]["weight_only_int8"]["kept_fp16"] == ["down_proj", "v_proj", "vocabulary matrix (embedding/LM head)"]
    for r in record["variants"].values():  # int8 on the tiny random model is looser; measured, never assumed
        assert r["fidelity"]["top1_agreement"] > 0.8
        assert isinstance(r["fidelity"]["meets_floors"], bool)


def test_bench_figures_for_each_thread_count_in_the_manifest(android_run):
    out, _ = android_run
    manifest = json.loads((out / "dist" / "android" / "manifest.json").read_text())
    for role in ("student", "teacher"):
        assert sorted(manifest["bench_threads"][role]) == ["1", "2", "4"]
        for figures in manifest["bench_threads"][role].values():
            assert figures["decode_tokens_per_s"] > 0 and figures["peak_memory_mb"] > 0
    bench = manifest["bench"]
    # the profile's 4 threads, capped at this machine's cores less one: 4 threads on 2 cores measure contention
    assert bench["threads"] == max(1, min(4, os.cpu_count() - 1)) and "host LiteRT (x86-64 XNNPACK)" in bench["runtime"]
    glue = bench["python_glue"]
    assert glue["invoke_only_decode_tokens_per_s"] > 0 and glue["signature_runner_decode_tokens_per_s"] > 0
    assert manifest["speedup_vs_teacher"] == pytest.approx(
        bench["decode_tokens_per_s"] / manifest["teacher_bench"]["decode_tokens_per_s"], rel=1e-2)


def test_litertlm_is_timed_in_rounds_beside_our_loop_on_the_same_graph(android_run):
    """LiteRT-LM's benchmark and our loop on the .tflite inside the same .litertlm alternate round by round, at the
    same threads, prompt and decode length (within the cache), with LiteRT-LM's weight cache on and left nowhere."""
    out, _ = android_run
    record = json.loads((out / "bench-android" / "record.json").read_text())
    assert record["profile_threads"] == 4 and record["threads"] == max(1, min(4, os.cpu_count() - 1))
    for role in ("student", "teacher"):
        r = record["litertlm"][role]
        assert r["threads"] == record["threads"] and r["repeats"] == record["repeats"]
        assert "weight cache on" in r["runtime"]
        assert r["prefill_tokens"] == 16 and record["new_tokens"] <= r["decode_tokens"] < 128 - 16  # tiny max_len
        lm_lo, lm_hi = r["decode_tokens_per_s_spread"]
        host_lo, host_hi = r["host_loop_decode_tokens_per_s_spread"]
        assert 0 < host_lo <= r["host_loop_decode_tokens_per_s"] <= host_hi
        assert lm_lo / host_hi <= r["decode_vs_host_loop"] <= lm_hi / host_lo  # a median of per-round ratios
    assert record["litertlm"]["speedup_vs_teacher"] == pytest.approx(
        record["litertlm"]["student"]["decode_tokens_per_s"] / record["litertlm"]["teacher"]["decode_tokens_per_s"],
        rel=1e-2)
    assert not list(out.rglob("*.xnnpack_cache"))


def test_verify_and_check_pass_then_catch_a_corrupt_model(android_run, tmp_path):
    out, _ = android_run
    proc = edgedistil("verify", out / "dist" / "android")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_runs"][0]["io_matches_manifest"]
    proc = edgedistil("check", out / "dist" / "android", "--budgets", TINY_BUDGETS)
    assert proc.returncode == 0, proc.stdout
    copy = tmp_path / "android"
    shutil.copytree(out / "dist" / "android", copy)
    (copy / "model.tflite").write_bytes(b"not a flatbuffer" * 100)
    proc = edgedistil("verify", copy)
    assert proc.returncode == 2 and "does not match its sha256" in proc.stderr


def test_rebuild_is_cached(android_run):
    out, _ = android_run
    proc = edgedistil("build", "--target", "android", "--config", TINY, "--budgets", TINY_BUDGETS, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("convert[litert-student]", "convert[litert-teacher]", "bench[android]", "convert[android]"):
        assert f"[{stage}] cached" in proc.stderr


def test_host_bench_of_a_bundle_through_the_cli(android_run, tmp_path):
    out, _ = android_run
    proc = edgedistil("bench", "--target", "android", "--config", TINY, "--bundle", out / "dist" / "android",
                      "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "bench.json").read_text())
    assert sorted(record["student"]) == ["1", "2", "4"]


def test_the_shipped_litertlm_says_what_our_loop_says_on_its_tflite(android_run):
    """LiteRT-LM on model.litertlm and our CompiledModel loop on model.tflite (the same graph, int8) generate the same
    greedy tokens from a prompt longer than one prefill chunk."""
    from tokenizers import Tokenizer

    bundle = android_run[0] / "dist" / "android"
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    prompt = "The quick brown fox jumps over the lazy dog, and then it runs into the woods to find"
    ids = tokenizer.encode(prompt).ids
    assert len(ids) > 16
    runtime = LiteRtLmRuntime(bundle / "model.litertlm")
    try:
        assert runtime.tokenize(prompt) == ids
        got = runtime.generate(prompt, 12)
    finally:
        runtime.close()
    ours = ResidentLoop(bundle / "model.tflite").greedy(ids, 12)
    if 0 in ours:  # the runtime stops at the stop token <|endoftext|> and does not print it
        ours = ours[:ours.index(0)]
    assert got.prompt_tokens == len(ids) and got.text == tokenizer.decode(ours)


def test_litertlm_figures_are_gated_by_check_and_shown_in_the_report(android_run, tmp_path):
    """check reads LiteRT-LM's benchmark and its greedy tokens from the manifest; the report shows both."""
    from edgedistil.report.html import collect, summary_markdown

    out, _ = android_run
    bundle = out / "dist" / "android"
    manifest = json.loads((bundle / "manifest.json").read_text())
    decode = manifest["litertlm_bench"]["student"]["decode_tokens_per_s"]
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(f"[budgets]\nlitertlm_fp32_tokens_match_min = 1.0\nlitertlm_decode_tokens_per_s_min = "
                       f"{decode * 10}\nlitertlm_decode_vs_host_loop_min = 0.0\n")
    proc = edgedistil("check", bundle, "--budgets", budgets, "--format", "json")
    assert proc.returncode == 1, proc.stdout
    rows = {r["budget"]: r for r in json.loads(proc.stdout)["budgets"]}
    assert rows["litertlm_fp32_tokens_match_min"]["measured"] == 1.0  # fp32 in LiteRT-LM says what PyTorch says
    assert rows["litertlm_fp32_tokens_match_min"]["status"] == "pass"
    assert rows["litertlm_decode_tokens_per_s_min"]["measured"] == decode
    assert rows["litertlm_decode_tokens_per_s_min"]["status"] == "fail"  # ten times what it measured
    assert rows["litertlm_decode_vs_host_loop_min"]["measured"] == manifest["litertlm_bench"]["student"][
        "decode_vs_host_loop"] > 0
    md = summary_markdown(collect(out))
    assert f"| decode tok/s | {decode:.1f} |" in md and "LiteRT-LM decode / our loop" in md
    assert "| fp32 | held-out text, longer than one prefill chunk | 32/32 | yes |" in md


def test_a_litertlm_budget_on_a_bundle_without_litertlm_fails_as_not_measured():
    from edgedistil.check.budgets import evaluate

    manifest = {"target": "web", "files": [{"bytes": 10}]}
    [row] = evaluate(manifest, {"litertlm_decode_tokens_per_s_min": 10.0})
    assert row["status"] == "fail" and row["note"] == "not measured"


def unshare_refused() -> str:
    """Why this machine refuses a private mount namespace, or "" where it allows one."""
    import subprocess

    if shutil.which("unshare") is None:
        return ""  # util-linux is part of every Debian: its absence is a broken machine, and the bench says so
    proc = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    return "" if proc.returncode == 0 else proc.stderr.strip() or "unshare -m failed"


def test_the_tiny_bundle_on_emulated_arm64_against_x86_64(android_run, tmp_path):
    """`bench --emulator` sets up the arm64 root (once, into the cache), runs the shipped .tflite and .litertlm under
    QEMU and natively, and writes both into the manifest, where `check` gates the top-1 gap.

    It skips only where the kernel refuses `unshare -m` (a container without CAP_SYS_ADMIN: a limit of the
    machine, not of edgedistil); a missing qemu-user-static or debootstrap is a broken setup (scripts/setup.sh
    installs them) and fails, as does any failure of the emulated run itself."""
    refused = unshare_refused()
    if refused:
        pytest.skip(f"this machine refuses a private mount namespace ({refused})")
    run = tmp_path / "run"
    shutil.copytree(android_run[0], run, ignore=shutil.ignore_patterns("teacher-tiny"))
    bundle = run / "dist" / "android"
    proc = edgedistil("bench", "--target", "android", "--config", TINY, "--bundle", bundle, "--emulator",
                      "--out", tmp_path / "bench")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert record == json.loads((bundle / "manifest.json").read_text())["emulated_arm64"]
    assert record["label"] == "emulated ARM64 (QEMU), not a phone"
    arm, host = record["arm64"], record["x86_64"]
    assert arm["machine"] == "aarch64" and host["machine"] == "x86_64"
    for r in (arm, host):  # each against the fp32 PyTorch student, over the same held-out positions
        assert r["positions_compared"] == host["positions_compared"] > 0
        assert r["top1_agreement"] > 0.8 and r["greedy_tokens"] == 64
        assert r["decode_tokens_per_s"]["student"] > 0 and r["speedup_vs_teacher"] > 0
        assert r["litertlm"]["ran"], r["litertlm"]  # LiteRT-LM's aarch64 build runs the .litertlm under QEMU
    assert record["top1_gap"] == pytest.approx(abs(arm["top1_agreement"] - host["top1_agreement"]), abs=1e-6)
    assert record["litertlm_text_equal_host"] is not None
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("[budgets]\nemulated_arm64_top1_gap_max = 0.005\n")  # the goal: within 0.5 points
    proc = edgedistil("check", bundle, "--budgets", budgets, "--format", "json")
    [row] = json.loads(proc.stdout)["budgets"]
    assert row["measured"] == record["top1_gap"]
    assert proc.returncode == (0 if record["top1_gap"] <= 0.005 else 1)


def test_emulator_refuses_a_model_file_and_other_targets(tmp_path):
    proc = edgedistil("bench", "--target", "android", "--config", TINY, "--model", tmp_path / "m.tflite",
                      "--emulator", "--out", tmp_path)
    assert proc.returncode == 2 and "--emulator needs --bundle" in proc.stderr
    proc = edgedistil("bench", "--target", "web", "--config", TINY, "--bundle", tmp_path, "--emulator",
                      "--out", tmp_path)
    assert proc.returncode == 2 and "--emulator is for --target android" in proc.stderr


def tiny_lm(seed=0) -> EdgeLM:
    cfg = EdgeConfig.from_hf_dict({"model_type": "llama", "vocab_size": 67, "hidden_size": 32,
                                   "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "max_position_embeddings": 64})
    torch.manual_seed(seed)
    model = EdgeLM(cfg, max_len=32).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if "norm" in name
                    else 0.4 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def fp32_tflite(tmp_path_factory):
    model = tiny_lm()
    path = tmp_path_factory.mktemp("tflite") / "model.tflite"
    convert_tflite(model, "fp32", path, prefill_len=8, max_len=32)
    return model, path


def test_both_bindings_generate_what_pytorch_generates(fp32_tflite):
    model, path = fp32_tflite
    prompt = [3, 17, 5, 44, 9, 12, 60, 2, 31, 8, 19]  # two prefill chunks, the second padded
    reference = TorchLM(model, 32)
    want = greedy(reference.step, reference.empty_cache(), prompt, 16, 8, 32)
    lm = LiteRtLM(path)
    assert greedy(lm.step, lm.empty_cache(), prompt, 16, 8, 32) == want
    loop = ResidentLoop(path)
    assert loop.greedy(prompt, 16) == want
    assert loop.greedy(prompt, 16) == want  # reset() really empties the resident cache
    logits, _ = lm.step(prompt[:8], 0, lm.empty_cache())
    with torch.no_grad():
        ref, _, _ = model.step(torch.tensor([prompt[:8]]), torch.tensor([0]), *model.empty_cache(32))
    np.testing.assert_allclose(logits, ref[0].numpy(), atol=1e-4)


def test_a_step_of_the_wrong_length_is_refused(fp32_tflite):
    _, path = fp32_tflite
    lm = LiteRtLM(path)
    with pytest.raises(EdgeError, match="1 or 8 tokens per call"):
        lm.step([1, 2, 3], 0, lm.empty_cache())


def test_converter_memory_preflight():
    assert converter_peak_bytes(50_000_000) == pytest.approx(2.2e9)
    with pytest.raises(EdgeError, match=r"needs about 2\.2 GB of memory, 1\.0 GB is available"):
        preflight_memory(50_000_000, available=int(1e9))
    assert preflight_memory(50_000_000, available=int(8e9))["estimated_peak_gb"] == 2.2


def test_unknown_variant_is_refused():
    with pytest.raises(EdgeError, match="unknown LiteRT variant 'int4'"):
        AndroidOptions(bundle_variant="int4").check()


def test_corrupt_tflite_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(EdgeError, match="is not a loadable .tflite"):
        read_signatures(bad)


# ---- the adb path: command construction and parsing of captured output ------------------------------------------


def test_parse_captured_benchmark_output():
    got = parse_benchmark_output((FIXTURES / "benchmark_model_4threads.txt").read_text())
    assert got["init_us"] == 855 and got["first_inference_us"] == 49060
    assert got["inference_avg_us"] == 33209.4 and got["warmup_avg_us"] == 34825.1
    assert got["runs"] == 50 and got["inference_min_us"] == 32641 and got["inference_max_us"] == 34005
    assert got["peak_memory_mb"] == 12.8672 and got["memory_kind"] == "peak"
    older = parse_benchmark_output((FIXTURES / "benchmark_model_memory_delta.txt").read_text())
    assert older["inference_avg_us"] == 1039.66
    assert older["memory_kind"] == "delta from tool start" and older["peak_memory_mb"] == 12.1055


def test_output_without_timings_is_one_clear_error():
    with pytest.raises(EdgeError, match="printed no timing line .*Failed to mmap"):
        parse_benchmark_output("STARTING!\nGraph: [/data/local/tmp/x.tflite]\nFailed to mmap model x.tflite\n")


def test_device_listing_and_choice():
    listing = ("List of devices attached\n"
               "R58M12ABCDE            device usb:1-1 product:a52qnsxx model:SM_A525F device:a52q transport_id:3\n"
               "emulator-5554          unauthorized transport_id:4\n\n")
    devices = parse_devices(listing)
    assert devices == [{"serial": "R58M12ABCDE", "state": "device", "model": "SM_A525F"},
                       {"serial": "emulator-5554", "state": "unauthorized", "model": None}]
    assert pick_device(devices, None) == "R58M12ABCDE"
    with pytest.raises(EdgeError, match="is unauthorized"):
        pick_device(devices, "emulator-5554")
    with pytest.raises(EdgeError, match="no device 'XYZ'"):
        pick_device(devices, "XYZ")
    with pytest.raises(EdgeError, match="no Android device is attached"):
        pick_device(parse_devices("List of devices attached\n\n"), None)
    two = devices[:1] + [{"serial": "B", "state": "device", "model": None}]
    with pytest.raises(EdgeError, match="2 devices are attached"):
        pick_device(two, None)


def test_benchmark_command():
    cmd = benchmark_command("adb", "R58", "/data/local/tmp/edgedistil/model.tflite", "decode", 4, 30, 255)
    assert cmd[:4] == ["adb", "-s", "R58", "shell"]
    assert "--signature_to_run_for=decode" in cmd and "--num_threads=4" in cmd and "--use_xnnpack=true" in cmd
    assert "--input_layer_value_range=tokens,0,100:input_pos,0,255" in cmd


def test_device_bench_without_adb_fails_clearly(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"x")
    proc = edgedistil("bench", "--target", "android", "--model", model, "--device", "--out", tmp_path,
                      env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("edgedistil: error: adb was not found")


def test_a_teacher_too_big_to_convert_leaves_the_student_bundle(android_run, tmp_path, monkeypatch):
    from edgedistil import build as chain
    from edgedistil.config import load_recipe
    from edgedistil.convert import android

    out, _ = android_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "litert" / "teacher")
    (copy / "stages" / "convert-litert-teacher.json").unlink()

    def preflight(parameters, available=None):  # the tiny teacher (0.2M) "does not fit", the student (0.1M) does
        if parameters > 150_000:
            raise EdgeError("converting needs more memory than is available", "free memory")
        return {"estimated_peak_gb": 0.0, "available_gb": 0.0}

    monkeypatch.setattr(android, "preflight_memory", preflight)
    logs = []
    rows, manifest, _ = chain.build(chain.Run(out=copy, recipe=load_recipe(TINY), log=logs.append), "android",
                                 TINY_BUDGETS)
    assert any(m.startswith("convert[litert-teacher]: not converted") for m in logs)
    assert manifest["bench"]["decode_tokens_per_s"] > 0 and manifest["teacher_bench"]["value"] is None
    assert manifest["speedup_vs_teacher"] is None and (copy / "dist" / "android" / "model.tflite").is_file()


# ---- LiteRT-LM: a chat model through the file's own chat template ------------------------------------------------


@pytest.fixture(scope="module")
def chat_litertlm(tmp_path_factory):
    """A 2-layer random ChatML model (tiny_teacher(chat=True)) as an fp32 .litertlm."""
    from edgedistil.convert.litertlm import build_litertlm
    from edgedistil.model import load_hf_folder
    from edgedistil.sources import load_corpus, tiny_teacher

    folder = tiny_teacher(tmp_path_factory.mktemp("chat") / "model", load_corpus("tiny").text, layers=2, chat=True)
    model = load_hf_folder(folder, max_len=96).eval()
    tflite = folder.parent / "model.tflite"
    convert_tflite(model, "fp32", tflite, prefill_len=8, max_len=96)
    path = folder.parent / "model.litertlm"
    packed = build_litertlm(tflite, folder, path, max_len=96)
    return folder, model, path, packed


def test_chat_prompt_through_the_files_template_matches_transformers(chat_litertlm):
    from edgedistil.convert.litertlm import check_in_litertlm
    from edgedistil.distill.data import load_tokenizer

    folder, model, path, packed = chat_litertlm
    assert packed["stop_tokens"] == [2] and packed["start_token"] is None and packed["chat_template"]
    heldout = np.asarray(load_tokenizer(folder).encode("The sea is wide and deep, and ships sail on it to far lands.")
                         .ids)
    check = check_in_litertlm(path, folder, TorchLM(model, 96), heldout, prefill_len=8, new_tokens=16)
    chat = check["prompts"][-1]
    assert chat["kind"] == "one user turn through the chat template"
    assert chat["rendered_prompt_matches"]  # LiteRT-LM's rendering = transformers' apply_chat_template
    assert chat["prompt_tokens"] > 8 and chat["text_equal"] and chat["tokens_matching"] == chat["reference_tokens"]
    assert check["all_equal"]


def test_a_difference_from_pytorch_records_how_close_the_two_tokens_were(chat_litertlm):
    """Where a runtime's text leaves PyTorch's greedy tokens, the record gives PyTorch's logit gap between the two
    tokens; the fp32 budget counts a near-tie as rounding and anything else as a real difference."""
    from edgedistil.convert.litertlm import NEAR_TIE_LOGITS, _compare
    from edgedistil.decoding import greedy, prefill
    from edgedistil.distill.data import load_tokenizer
    from edgedistil.targets.android import tokens_match

    folder, model, _, _ = chat_litertlm
    tok, lm = load_tokenizer(folder), TorchLM(model, 96)
    prompt = tok.encode("The sea is wide and deep", add_special_tokens=False).ids
    want = greedy(lm.step, lm.empty_cache(), prompt, 6, 8, lm.max_len)
    assert _compare(tok, lm, prompt, tok.decode(want), 6, [], 8) == {
        "reference_tokens": 6, "tokens_matching": 6, "text_equal": True}  # alike: no divergence recorded
    row = prefill(lm.step, lm.empty_cache(), prompt, 8, lm.max_len)[0][-1]
    runner_up = int(np.argsort(row)[-2])  # a runtime that chose the second-best first token
    other = _compare(tok, lm, prompt, tok.decode([runner_up]), 6, [], 8)
    gap = other["divergence"]
    assert other["tokens_matching"] == 0 and gap["position"] == 0 and gap["reference_token"] == want[0]
    assert gap["logit_gap"] == pytest.approx(float(row[want[0]] - row[runner_up]), abs=1e-5) and gap["logit_gap"] > 0
    assert gap["near_tie"] == (gap["logit_gap"] < NEAR_TIE_LOGITS)
    stopped = _compare(tok, lm, prompt, tok.decode(want[:2]), 6, [2], 8)["divergence"]  # it stopped at token 2
    assert stopped["position"] == 2 and stopped["runtime_token"] == 2
    check = {"reference_tokens": 12, "prompts": [{"reference_tokens": 6, "tokens_matching": 6},
                                                 {"reference_tokens": 6, "tokens_matching": 2, "divergence": gap}]}
    assert tokens_match(check) == (1.0 if gap["near_tie"] else 8 / 12)
    check["prompts"][1]["divergence"] = {**gap, "near_tie": True}
    assert tokens_match(check) == 1.0


def test_a_damaged_litertlm_is_one_clear_error(chat_litertlm, tmp_path):
    from edgedistil.convert.litertlm import read_litertlm

    bad = tmp_path / "model.litertlm"
    bad.write_bytes(chat_litertlm[2].read_bytes()[:4096])
    with pytest.raises(EdgeError, match="is not a readable .litertlm"):
        read_litertlm(bad)
    with pytest.raises(EdgeError, match="does not exist"):
        LiteRtLmRuntime(tmp_path / "missing.litertlm")


def test_a_model_folder_without_an_eos_token_is_refused(chat_litertlm, tmp_path):
    from edgedistil.convert.litertlm import generation_settings

    folder = chat_litertlm[0]
    copy = tmp_path / "noeos"
    shutil.copytree(folder, copy)
    (copy / "generation_config.json").unlink()
    config = json.loads((copy / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(EdgeError, match="names no eos token"):
        generation_settings(copy)


def test_weight_only_int8_ships_the_gptq_codes_exactly(tmp_path):
    """GPTQ-rounded weights go into the .tflite as they are: LiteRT on the file computes what PyTorch computes with
    the rounded weights (and the kept matrices in fp16), and the rounding beats round-to-nearest on the output error
    of its layers over the calibration text, which is what it minimises."""
    from edgedistil.convert.android import GPTQ_SKIP
    from edgedistil.quantize.torch_gptq import gptq_int8_rows

    model = tiny_lm(3)
    ids = np.random.default_rng(0).integers(0, 67, size=2000)
    path = tmp_path / "model.tflite"
    how = convert_tflite(model, "weight_only_int8", path, prefill_len=8, max_len=32, calib_ids=ids)
    assert how["rounding"] == "gptq" and how["layers"] == 5 * 2 and how["calibration_tokens"] >= 256
    rounded, _ = gptq_int8_rows(model, ids, 8, 32, GPTQ_SKIP)
    row = rounded.model.layers[0].self_attn.q_proj.weight.detach().double().numpy()[0]
    scale = np.abs(row).max() / 127
    np.testing.assert_allclose(row / scale, np.round(row / scale), atol=1e-3)  # on its row's int8 grid
    expected = rounded
    with torch.no_grad():  # the file keeps these fp16
        for name, p in expected.named_parameters():
            if any(part in name for part in GPTQ_SKIP + ("embed_tokens",)):
                p.copy_(p.half().float())
    lm = LiteRtLM(path)
    prompt = ids[:8].tolist()
    logits, _ = lm.step(prompt, 0, lm.empty_cache())
    with torch.no_grad():
        want, _, _ = expected.step(torch.tensor([prompt]), torch.tensor([0]), *expected.empty_cache(32))
    np.testing.assert_allclose(logits, want[0].numpy(), atol=2e-3)

    nearest = tmp_path / "nearest.tflite"
    assert convert_tflite(model, "weight_only_int8", nearest, 8, 32)["rounding"] == "nearest"
    # what GPTQ minimises: each layer's output error on the calibration inputs, sum of dW H dW^T over the layers
    from edgedistil.quantize.blockwise import calibration_windows
    from edgedistil.quantize.torch_gptq import linear_hessians

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and not any(part in n for part in GPTQ_SKIP)]
    hessians = linear_hessians(model, names, calibration_windows(ids, 8, 32))
    plain = gptq_int8_rows(model, ids, 8, 32, GPTQ_SKIP, nearest=True)[0]
    weights = {label: dict(m.named_parameters()) for label, m in (("gptq", rounded), ("nearest", plain))}
    original = dict(model.named_parameters())
    errors = {label: sum(float(np.trace((d := (w[f"{n}.weight"] - original[f"{n}.weight"]).detach().double().numpy())
                                        @ hessians[n] @ d.T)) for n in names)
              for label, w in weights.items()}
    assert errors["gptq"] < errors["nearest"], errors


def test_the_report_shows_the_emulated_arm64_record_beside_this_host():
    from edgedistil.targets.android import report_blocks

    def side(machine, top1, student):
        return {"machine": machine, "top1_agreement": top1, "kl_mean": 1e-4, "greedy_tokens_matching": 60,
                "greedy_tokens": 64, "decode_tokens_per_s": {"student": student, "teacher": student / 2},
                "speedup_vs_teacher": 2.0, "litertlm": {"ran": True}}

    record = {"label": "emulated ARM64 (QEMU), not a phone", "model": "model.tflite", "binding": "LiteRT",
              "reference": "fp32 PyTorch student", "x86_64": side("x86_64", 0.99, 50.0),
              "arm64": side("aarch64", 0.985, 5.0), "top1_gap": 0.005, "litertlm_text_equal_host": True}
    assert report_blocks({"target": "android"}) == []
    [(kind, [text]), (_, header, rows)] = report_blocks({"target": "android", "emulated_arm64": record})
    assert "emulated ARM64 (QEMU), not a phone" in text and "top-1 gap 0.0050" in text
    assert header[1] == "top-1" and [r[0] for r in rows] == ["arm64", "x86_64 (this host)"]
    assert rows[0][1:5] == ["0.9850", "1.00e-04", "60/64", "5.0"] and rows[1][4] == "50.0"
