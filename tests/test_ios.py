"""iOS (Core ML): the stateful wrapper equals EdgeLM.step, conversion of a tiny model read back from disk (spec,
weight precisions, MIL-reference fidelity), a planted weight corruption the fidelity check catches, the iOS 17
fallback, the bundle through the real CLI, and the macOS-only bench around its Core ML call."""

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from conftest import edgedistil
from edgedistil.bench.coreml import peak_memory_mb, run_metrics, summarize, time_runs
from edgedistil.convert.ios import IosOptions, run_coreml
from edgedistil.decoding import decode, prefill
from edgedistil.errors import EdgeError
from edgedistil.fidelity import measure_fidelity
from edgedistil.model import EdgeConfig, EdgeLM, save_hf_folder
from edgedistil.runtimes.coreml import require_macos, step_feed
from edgedistil.runtimes.coreml_mil_reference import MilReferenceLM
from edgedistil.runtimes.coreml_model import StatefulTorchLM, StatelessStep, rms_norm_fp16_safe
from edgedistil.runtimes.torch_step import TorchLM

MAX_LEN, PREFILL = 32, 8


def tiny_lm(seed=0, **extra) -> EdgeLM:
    cfg = EdgeConfig.from_hf_dict({"model_type": "llama", "vocab_size": 61, "hidden_size": 32,
                                   "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "max_position_embeddings": 64, **extra})
    torch.manual_seed(seed)
    model = EdgeLM(cfg, max_len=MAX_LEN).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights that matter (HF's init makes every model alike)
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.4 * noise)
    return model


def heldout(n=200, seed=3):
    return np.random.RandomState(seed).randint(0, 61, n)


@pytest.mark.parametrize("extra", [{}, {"model_type": "qwen2", "tie_word_embeddings": True}])
def test_stateful_wrapper_equals_edgelm_step(extra):
    model = tiny_lm(**extra)
    ids = heldout(30).tolist()
    ref, got = TorchLM(model, MAX_LEN), StatefulTorchLM(model, MAX_LEN)
    for lm in (ref, got):
        lm.logits_p, cache = prefill(lm.step, lm.empty_cache(), ids[:13], PREFILL, MAX_LEN)  # padded 2nd chunk
        lm.logits_d, _ = decode(lm.step, cache, ids[13:20], 13)
    assert np.abs(ref.logits_p - got.logits_p).max() < 1e-4
    assert np.abs(ref.logits_d - got.logits_d).max() < 1e-4


def test_stateless_wrapper_equals_edgelm_step():
    model = tiny_lm()
    k, v = model.empty_cache(MAX_LEN)
    ids, pos = torch.tensor([[5, 9, 2]], dtype=torch.int32), torch.tensor([4], dtype=torch.int32)
    want = model.step(ids, pos, k, v)
    got = StatelessStep(model)(ids, pos, k, v)
    for a, b in zip(want, got):
        assert (a - b).abs().max() < 1e-4
    assert k.abs().sum() == 0  # the input cache is not written in place


def test_rms_norm_fp16_safe_where_plain_fp16_overflows():
    model = tiny_lm()
    norm = model.model.norm
    x = torch.randn(1, 3, 32) * 100
    x[0, 0, 0] = 300.0  # 300^2 > 65504: a plain fp16 RMSNorm gives inf
    plain = x.half().pow(2).mean(-1)
    assert torch.isinf(plain).any()
    got = rms_norm_fp16_safe(norm, x.half()).float()
    assert torch.isfinite(got).all()
    assert (got - norm(x)).abs().max() < 0.02 * norm(x).abs().max()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ios")
    save_hf_folder(tiny_lm(), root / "student")
    options = IosOptions(compute="mixed", variants=("fp16", "int8"), bundle_variant="int8", prefill_len=PREFILL,
                         max_len=MAX_LEN, fidelity_segments=2, greedy_tokens=8)
    record = run_coreml(root / "student", root / "coreml", heldout(), options, log=lambda m: None)
    return root, record


def test_package_spec_functions_io_states(converted):
    root, record = converted
    assert json.loads((root / "coreml" / "record.json").read_text())["variants"].keys() == {"fp16", "int8"}
    spec = record["variants"]["fp16"]["spec"]
    assert spec["deployment_target"] == "iOS18"
    fns = {f["name"]: f for f in spec["functions"]}
    assert sorted(fns) == ["decode", "prefill"]
    cache = [2, 1, 2, MAX_LEN, 8]
    for name, t in (("prefill", PREFILL), ("decode", 1)):
        f = fns[name]
        assert f["inputs"] == [{"name": "input_ids", "shape": [1, t], "dtype": "int32"},
                               {"name": "position", "shape": [1], "dtype": "int32"}]
        assert [(s["name"], s["shape"], s["dtype"]) for s in f["states"]] == [("k_cache", cache, "float16"),
                                                                              ("v_cache", cache, "float16")]
        assert f["outputs"][0]["name"] == "logits"
        # the cache is written in place with a slice, not rewritten through a one-hot matmul
        assert f["ops"]["slice_update"] == 4 and f["ops"]["write_state"] == 4
        assert "einsum" not in f["ops"]


def test_weights_shared_and_precisions_read_back(converted):
    root, record = converted
    fp16, int8 = record["variants"]["fp16"], record["variants"]["int8"]
    # 2 layers x 7 matrices + the embedding + the (untied) head; the RoPE tables stay fp16 consts
    # every matrix int8 but the two vocabulary-sized ones (embedding, untied head), kept fp16 on purpose
    assert int8["weights_stored"]["int8 (constexpr_blockwise_shift_scale)"] == 14
    assert len(int8["kept_fp16"]) == 2
    assert {w["name"] for w in int8["weights"] if w["op"] == "const" and "rope" not in w["name"]} == \
        set(int8["kept_fp16"])
    # iOS 18 int8 is block-wise along the input (per channel missed the int8 floor on the embedded default)
    # (blocks of 16 here: the largest of 32, 16, 8, 4 that divides every width, 48 included)
    assert {w["block"] for w in int8["weights"] if w["op"] == "constexpr_blockwise_shift_scale"} == {16}
    rope = [w for w in int8["weights"] if "rope" in w["name"]]
    assert len(rope) == 2 and all(w["stored"] == "float16" and w["op"] == "const" for w in rope)
    # two functions, one copy of the weights: the weight file is not twice the fp16 weights
    def weight_file(variant):
        return (root / "coreml" / variant / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" /
                "weight.bin").stat().st_size

    fp16_bytes = sum(np.prod(w["shape"]) for w in fp16["weights"]) * 2
    assert fp16_bytes <= weight_file("fp16") < 1.3 * fp16_bytes
    # int8: a byte per weight plus an fp16 scale per block of 16; the kept matrices two bytes per weight
    int8_bytes = sum(np.prod(w["shape"]) * (1 + 2 / 16) for w in int8["weights"] if w["op"] != "const") + \
        sum(np.prod(w["shape"]) * 2 for w in int8["weights"] if w["name"] in int8["kept_fp16"])
    assert int8_bytes <= weight_file("int8") < 1.3 * int8_bytes < weight_file("fp16")


def test_mixed_compute_keeps_weight_readers_fp16_and_the_rest_fp32(converted):
    _, record = converted
    assert record["compute"] == "mixed"
    dtypes = record["variants"]["fp16"]["compute_dtypes"]
    # the weight readers in fp16; the residual adds, norms, softmax and SiLU in fp32
    assert set(dtypes["fp16"]) <= {"linear", "matmul", "gather", "gather_along_axis"}
    assert dtypes["fp16"]["linear"] == 15  # 2 layers x 7 + the head
    for op in ("add", "reduce_mean", "rsqrt", "softmax", "silu"):
        assert dtypes["fp32"][op] > 0 and op not in dtypes["fp16"]


def test_dequantized_weights_measured_in_pytorch(converted):
    _, record = converted
    fp16, int8 = (record["variants"][v]["weights_in_pytorch"] for v in ("fp16", "int8"))
    assert fp16["weights_loaded"] == int8["weights_loaded"] == 16  # every matrix, read back from the package
    assert fp16["kl_mean"] < int8["kl_mean"] < 0.05  # int8 rounding costs more than fp16, and it is measured
    assert 0 < int8["top1_agreement"] <= 1 and int8["perplexity"] > 0


def test_mil_reference_fidelity_against_fp32_student(converted):
    _, record = converted
    fp16, int8 = record["variants"]["fp16"]["fidelity"], record["variants"]["int8"]["fidelity"]
    assert fp16["top1_agreement"] >= 0.99 and fp16["kl_mean"] < 1e-3
    assert fp16["greedy_tokens_matching"] == fp16["greedy_tokens"] == 8
    # a random tiny model has near-ties everywhere: top-1 is loose here, KL is the tight figure
    assert int8["top1_agreement"] >= 0.8 and int8["kl_mean"] < 0.05
    assert int8["kl_mean"] > fp16["kl_mean"]  # int8 weights are measured, not the fp16 ones again


def negate_largest_blob(weight_bin):
    """Flip the sign of every fp16 value of the largest weight blob (coremltools' blob file: 64-byte metadata
    records with sentinel 0xDEADBEEF, data type, size and offset)."""
    data = bytearray(weight_bin.read_bytes())
    off, blobs = 64, []
    while off + 24 <= len(data):
        sentinel, dtype, size, start = struct.unpack_from("<IIQQ", data, off)
        assert sentinel == 0xDEADBEEF
        blobs.append((size, start, dtype))
        off = -(-(start + size) // 64) * 64
    size, start, dtype = max(blobs)
    assert dtype == 1  # fp16
    for i in range(start + 1, start + size, 2):  # little-endian: the sign bit is in the high byte
        data[i] ^= 0x80
    weight_bin.write_bytes(bytes(data))


def test_planted_weight_corruption_is_caught(converted, tmp_path):
    root, _ = converted
    package = tmp_path / "model.mlpackage"
    shutil.copytree(root / "coreml" / "fp16" / "model.mlpackage", package)
    negate_largest_blob(package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin")
    model = tiny_lm()
    fid = measure_fidelity(TorchLM(model, MAX_LEN), MilReferenceLM(package), heldout(), PREFILL, segments=2,
                           greedy_tokens=8)
    assert fid["top1_agreement"] < 0.9 and fid["kl_mean"] > 0.05


def test_ios17_fallback_cache_as_inputs_and_outputs(tmp_path):
    save_hf_folder(tiny_lm(), tmp_path / "student")
    options = IosOptions(min_ios=17, compute="fp16", variants=("fp16",), bundle_variant="fp16", prefill_len=PREFILL,
                         max_len=MAX_LEN, fidelity_segments=1, greedy_tokens=8)
    record = run_coreml(tmp_path / "student", tmp_path / "coreml", heldout(), options, log=lambda m: None)
    assert not record["stateful"]
    # compute = "fp16": every op between the weights in fp16 too, as the Neural Engine runs them
    dtypes = record["variants"]["fp16"]["compute_dtypes"]
    assert record["compute"] == "fp16" and "fp32" not in dtypes and dtypes["fp16"]["add"] > 0
    (main,) = record["variants"]["fp16"]["spec"]["functions"]
    assert main["name"] == "main" and main["states"] == []
    assert sorted(main["inputs"][0]["enumerated_shapes"]) == [[1, 1], [1, PREFILL]]
    assert [o["name"] for o in main["outputs"]] == ["logits", "k_cache_out", "v_cache_out"]
    fid = record["variants"]["fp16"]["fidelity"]
    assert fid["top1_agreement"] >= 0.99 and fid["kl_mean"] < 1e-3


def test_bad_options_refused():
    with pytest.raises(EdgeError, match="min_ios 16"):
        IosOptions(min_ios=16).check()
    with pytest.raises(EdgeError, match="int4 block-wise weights need iOS 18"):
        IosOptions(min_ios=17, bundle_variant="int4").check()
    with pytest.raises(EdgeError, match="unknown Core ML variant 'int2'"):
        IosOptions(variants=("int2",)).check()
    with pytest.raises(EdgeError, match="compute precision 'fp8'"):
        IosOptions(compute="fp8").check()


def test_build_ios_bundle_verify_and_bench_through_cli(tiny_run, tmp_path):
    src, _ = tiny_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("distill", "teacher-tiny"):  # the distilled tiny student, reused: its stage stays cached
        shutil.copytree(src / name, out / name)
    (out / "stages").mkdir()
    shutil.copy2(src / "stages" / "distill.json", out / "stages" / "distill.json")
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("[budgets]\nsize_mb_max = 5.0\ntop1_agreement_min = 0.8\nkl_mean_max = 0.05\n")
    proc = edgedistil("build", "--target", "ios", "--config", "models/tiny.toml", "--budgets", budgets, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[distill] cached" in proc.stderr and "not measured on this host" in proc.stderr
    bundle = out / "dist" / "ios"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"] == "ios" and manifest["min_ios"] == 18
    assert [g["name"] for g in manifest["graphs"]] == ["prefill", "decode"]
    assert manifest["quantization"]["method"] == "int8"  # targets/ios.toml's choice, by measured fidelity
    assert set(manifest["quantization"]["variants"]) == {"fp16", "int8", "int4", "pal4"}
    assert manifest["bench"]["value"] is None and "needs macOS" in manifest["bench"]["reason"]
    assert {f["path"] for f in manifest["files"]} >= {"model.mlpackage/Manifest.json", "tokenizer.json", "USAGE.md",
                                                      "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"}
    assert 'functionName = function' in (bundle / "USAGE.md").read_text()
    # the Swift bench package ships in the bundle, listed with its hashes, for the stateful package
    assert {"bench/Package.swift", "bench/Sources/edgedistil-bench/main.swift"} <= {f["path"] for f in manifest["files"]}
    main_swift = (bundle / "bench" / "Sources" / "edgedistil-bench" / "main.swift").read_text()
    assert "makeState()" in main_swift and f"prefillLen = {manifest['runtime']['prefill_len']}," in main_swift
    assert ".macOS(.v15)" in (bundle / "bench" / "Package.swift").read_text()

    proc = edgedistil("verify", bundle)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["model_runs"][0]["decode_step"] == "ok"
    weights = bundle / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    proc = edgedistil("verify", bundle)
    assert proc.returncode == 2 and "does not match its sha256" in proc.stderr

    proc = edgedistil("bench", "--target", "ios", "--bundle", bundle)
    assert proc.returncode == 2 and "Core ML execution needs macOS" in proc.stderr


def test_bench_feed_and_timing_logic_without_core_ml():
    feed = step_feed([4, 5, 6], 7)
    assert feed["input_ids"].dtype == np.int32 and feed["input_ids"].shape == (1, 3)
    assert feed["position"].dtype == np.int32 and feed["position"].tolist() == [7]
    k = np.zeros((1, 1, 1, 4, 2), np.float16)
    assert step_feed([1], 0, (k, k))["k_cache"] is k

    assert run_metrics(64, 32, 0.5, 2.0) == {"ttft_ms": 500.0, "prefill_tokens_per_s": 128.0,
                                             "decode_tokens_per_s": 16.0}
    s = summarize([run_metrics(8, 4, t, d) for t, d in ((0.1, 1.0), (0.3, 2.0), (0.2, 4.0))])
    assert s["ttft_ms"] == 200.0 and s["ttft_ms_spread"] == [100.0, 300.0]
    assert s["decode_tokens_per_s"] == 2.0 and s["decode_tokens_per_s_spread"] == [1.0, 4.0]
    with pytest.raises(EdgeError):
        summarize([])
    assert peak_memory_mb(2**30, "Darwin") == 1024 and peak_memory_mb(2**20, "Linux") == 1024

    ticks = iter(range(1000))  # a clock that advances one second per reading
    runs = time_runs(TorchLM(tiny_lm(), MAX_LEN), heldout(10).tolist(), PREFILL, 3, repeats=2,
                     clock=lambda: next(ticks))
    assert len(runs) == 2  # the warm-up run is not counted
    assert runs[0] == {"ttft_ms": 1000.0, "prefill_tokens_per_s": 10.0, "decode_tokens_per_s": 3.0}

    with pytest.raises(EdgeError, match="Core ML execution needs macOS"):
        require_macos("linux")


def test_swift_bench_package_for_the_ios17_package(tmp_path):
    from edgedistil.convert.ios_bench import write_bench_package

    files = write_bench_package(tmp_path, name="tiny-student", variant="fp16", target="iOS17", stateful=False,
                                prefill_len=PREFILL, max_len=MAX_LEN, cache_shape=[2, 1, 2, MAX_LEN, 8])
    assert {p.relative_to(tmp_path).as_posix() for p in files} == {
        "Package.swift", "Sources/edgedistil-bench/main.swift", "README.md"}
    main_swift = (tmp_path / "Sources" / "edgedistil-bench" / "main.swift").read_text()
    assert f"shape: [2, 1, 2, {MAX_LEN}, 8]" in main_swift and "k_cache_out" in main_swift
    assert "makeState" not in main_swift and "CACHE_SHAPE" not in main_swift
    assert main_swift.count("{") == main_swift.count("}")  # no brace lost to str.format
    assert ".macOS(.v14), .iOS(.v17)" in (tmp_path / "Package.swift").read_text()
