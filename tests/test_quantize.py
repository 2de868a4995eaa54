"""Quantization methods on a tiny exported Llama: every layer accounted for, float leftovers flagged, fidelity
measured against the fp32 PyTorch source."""

import numpy as np
import pytest

from edgedistil.errors import EdgeError
from edgedistil.export.onnx import run_export
from edgedistil.quantize.onnx import run_quantize
from edgedistil.quantize.precision import precision_report
from tests.test_export import CHUNK, MAX_LEN, VOCAB, make_llama

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    hf = make_llama(root / "hf", seed=3)
    heldout = np.random.default_rng(2).integers(0, VOCAB, 800)
    run_export(hf, root / "onnx", heldout, MAX_LEN, CHUNK, "student", **QUIET)
    return hf, root / "onnx" / "model.onnx", heldout, root


def by_node(record, part):
    return [layer for layer in record["precision"]["layers"] if part in layer["node"]]


def test_int8_accounts_for_every_layer_and_flags_float_leftovers(source):
    hf, src, heldout, root = source
    rec = run_quantize(src, hf, root / "int8", heldout, CHUNK, "int8", keep_float=["lm_head"], **QUIET)
    layers = rec["precision"]["layers"]
    assert len(layers) == 16  # 14 projections + embedding + head, as in the fp32 export
    head = by_node(rec, "lm_head")
    assert len(head) == 1 and head[0]["precision"] == "fp32" and head[0]["intended"] == "fp32"
    assert rec["precision"]["counts"] == {"int8": 15, "fp32": 1}
    assert rec["precision"]["unintended_float_layers"] == 0 and rec["warnings"] == []
    # the same file judged against a plan that wanted the head quantized: exactly that layer is flagged
    strict = precision_report(root / "int8" / "model.onnx", "int8", [])
    assert strict["unintended_float_layers"] == 1 and "lm_head" in strict["warnings"][0]
    fid = rec["fidelity"]
    assert fid["greedy_tokens"] == 64 and 0 < fid["top1_agreement"] <= 1 and fid["kl_mean"] >= 0
    assert rec["floors"]["precision"] == "int8" and fid["meets_floors"] == rec["floors"]["passed"]


def test_int4_is_matmulnbits_with_configurable_blocks(source):
    hf, src, heldout, root = source
    rec = run_quantize(src, hf, root / "int4", heldout, CHUNK, "int4", block_size=16, **QUIET)
    assert rec["ops"].get("MatMulNBits") == 15 and "block 16" in rec["scheme"] and rec["block_size"] == 16
    # every MatMul 4-bit; this layout's embedding is its own table (not the head's), so int8 rows looked up in
    # standard ops (a Gather of the codes, a Cast and a scale), which onnxruntime-web runs too
    assert rec["precision"]["counts"] == {"int4": 15, "int8": 1} and rec["warnings"] == []
    assert rec["int4_eight_bit"] == [] and by_node(rec, "embed")[0]["op"] == "Gather"
    assert "GatherBlockQuantized" not in rec["ops"]
    # layers named for 8 bits get them
    wide = run_quantize(src, hf, root / "int4-wide", heldout, CHUNK, "int4", block_size=16,
                        eight_bit=("lm_head", "down_proj"), **QUIET)
    assert wide["precision"]["counts"] == {"int4": 12, "int8": 4} and wide["int4_eight_bit"] == ["lm_head", "down_proj"]
    assert {layer["node"].split("/")[1] for layer in wide["precision"]["layers"] if layer["intended"] == "int8"} \
        == {"lm_head", "mlp"} and all(layer["precision"] == layer["intended"] for layer in wide["precision"]["layers"]
                                      if layer["op"] == "MatMulNBits")
    assert rec["bytes"] < wide["bytes"] < rec["source_bytes"]
    with pytest.raises(EdgeError, match="block_size"):
        run_quantize(src, hf, root / "int4-bad", heldout, CHUNK, "int4", block_size=24, **QUIET)
    assert not (root / "int4-bad").exists()


def test_int8_static_calibrates_on_decoding_traces(source):
    hf, src, heldout, root = source
    rec = run_quantize(src, hf, root / "static", heldout, CHUNK, "int8_static", **QUIET)
    assert rec["ops"].get("QuantizeLinear", 0) > 0 and rec["ops"].get("DequantizeLinear", 0) > 0
    assert rec["precision"]["counts"].get("int8") == 16 and rec["warnings"] == []
    assert rec["fidelity"]["positions_compared"] > 0


def test_fp16_halves_the_file_and_keeps_the_io(source):
    hf, src, heldout, root = source
    rec = run_quantize(src, hf, root / "fp16", heldout, CHUNK, "fp16", **QUIET)
    assert rec["precision"]["counts"] == {"fp16": 16} and rec["warnings"] == []
    assert rec["bytes"] < 0.6 * rec["source_bytes"]  # layer weights halve; RoPE tables and constants stay fp32
    assert rec["floors"]["passed"], rec["floors"]  # fp16 floors: top-1 >= 99.5%, KL <= 1e-3


def test_int8_weight_only_is_matmulnbits_8bit_with_int8_embedding(source):
    hf, src, heldout, root = source
    rec = run_quantize(src, hf, root / "int8wo", heldout, CHUNK, "int8_wo", **QUIET)
    assert rec["ops"].get("MatMulNBits") == 15 and rec["ops"].get("GatherBlockQuantized") == 1
    # 2 layers x 2 norms + the final norm smoothed, calibrated on held-out text between the fidelity segments
    assert rec["calibration"]["tokens"] >= 256 and len(rec["calibration"]["smoothed_inputs"]) == 5
    assert rec["precision"]["counts"] == {"int8": 16} and rec["warnings"] == []


def test_int8_storage_is_int8_on_disk_and_fp32_weights_once_loaded(source, tmp_path):
    """onnxruntime-web's int8: standard ops only, every layer int8 in the file, and ONNX Runtime folds each weight's
    Cast -> Mul into an fp32 initializer at load, so decoding runs plain fp32 MatMuls on GPTQ-rounded weights."""
    import onnx
    import onnxruntime as ort

    hf, src, heldout, root = source
    rec = run_quantize(src, hf, root / "int8storage", heldout, CHUNK, "int8_storage", **QUIET)
    assert rec["precision"]["counts"] == {"int8": 16} and rec["warnings"] == []
    assert rec["rounding"] == "gptq" and rec["calibration"]["tokens"] >= 256
    path = root / "int8storage" / "model.onnx"
    m = onnx.load(str(path))
    assert {o.domain for o in m.opset_import} <= {"", "ai.onnx"}  # nothing onnxruntime-web might lack
    int8 = {i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    # 16 layers in 15 tables: the tied head is the embedding's int8 rows read through a Transpose
    head, embed = by_node(rec, "lm_head")[0], by_node(rec, "embed")[0]
    readers = sorted((n.input[0], n.op_type) for n in m.graph.node if n.input and n.input[0] in int8)
    assert head["weight"] == embed["weight"] and len(readers) == 16
    assert [op for name, op in readers if "embed" in name] == ["Cast", "Gather"]
    assert len(int8) == 15 and not [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                                    and len(i.dims) == 2 and min(i.dims) > 1]  # no fp32 weight matrix is left
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "optimized.onnx"))
    inits = {i.name: i.data_type for i in opt.graph.initializer}
    layers = [n for n in opt.graph.node if n.op_type in ("MatMul", "FusedMatMul") and n.input[1] in inits]
    assert len(layers) == 15 and all(inits[n.input[1]] == onnx.TensorProto.FLOAT for n in layers)
    # fp32 compute on int8 weights: closer to the source than dynamic int8, whose activations are rounded too
    dynamic = run_quantize(src, hf, tmp_path / "int8", heldout, CHUNK, "int8", **QUIET)
    assert rec["fidelity"]["kl_mean"] < dynamic["fidelity"]["kl_mean"]


def test_int8_storage_keeps_a_float_head_apart_from_its_int8_embedding(source):
    """A head kept fp32 on purpose must not drag the tied embedding with it, nor the embedding the head; rounding to
    nearest needs no calibration."""
    hf, src, heldout, root = source
    rec = run_quantize(src, hf, root / "int8storage-head", heldout, CHUNK, "int8_storage", keep_float=["lm_head"],
                       rounding="nearest", **QUIET)
    assert rec["precision"]["counts"] == {"int8": 15, "fp32": 1} and rec["warnings"] == []
    assert by_node(rec, "lm_head")[0]["precision"] == "fp32" and by_node(rec, "embed")[0]["precision"] == "int8"
    assert rec["rounding"] == "nearest" and rec["calibration"] is None


@pytest.mark.parametrize("cache", ["full", "gqa"])
def test_int8_storage_reads_a_trimmed_heads_rows_from_the_embeddings_int8_table(tmp_path, cache):
    """A trimmed head (distill/head.py) is K rows of the embedding: int8_storage stores the table once and the head
    gathers its rows from it, constants that ONNX Runtime folds into an fp32 weight at load, so the file is no
    larger than the whole head's and decodes as the trimmed model does."""
    import onnx
    import onnxruntime as ort

    from edgedistil.model import write_head_rows

    hf = make_llama(tmp_path / "hf", seed=3)
    heldout = np.random.default_rng(2).integers(0, VOCAB, 800)
    run_export(hf, tmp_path / "whole", heldout, MAX_LEN, CHUNK, "student", cache=cache, **QUIET)
    whole = run_quantize(tmp_path / "whole" / "model.onnx", hf, tmp_path / "qwhole", heldout, CHUNK,
                         "int8_storage", **QUIET)
    kept = list(range(0, VOCAB, 2))
    write_head_rows(hf, kept, VOCAB, "every other id (a test)")
    run_export(hf, tmp_path / "trim", heldout, MAX_LEN, CHUNK, "student", cache=cache, **QUIET)
    rec = run_quantize(tmp_path / "trim" / "model.onnx", hf, tmp_path / "q", heldout, CHUNK, "int8_storage", **QUIET)
    assert rec["warnings"] == [] and rec["precision"]["counts"] == whole["precision"]["counts"]
    head, embed = by_node(rec, "lm_head")[0], by_node(rec, "embed")[0]
    assert head["precision"] == "int8" and head["weight"] == embed["weight"] and head["shape"][0] == VOCAB
    path = tmp_path / "q" / "model.onnx"
    m = onnx.load(str(path))
    int8 = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == len([i for i in onnx.load(str(tmp_path / "qwhole" / "model.onnx")).graph.initializer
                             if i.data_type == onnx.TensorProto.INT8])
    assert not [i.name for i in m.graph.initializer if len(kept) in i.dims and 64 in i.dims]  # no second matrix
    # + the kept ids, the head's index and floor (int64 and fp32 per vocabulary id) and their nodes
    assert rec["bytes"] - whole["bytes"] < len(kept) * 8 + VOCAB * 12 + 1024 < len(kept) * 64
    # the kept rows' fidelity to the trimmed fp32 model, as good as the whole head's to the whole model
    assert rec["fidelity"]["top1_agreement"] >= 0.95 and rec["fidelity"]["kl_mean"] < 0.02
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "optimized.onnx"))
    inits = {i.name: i for i in opt.graph.initializer}
    heads = [n for n in opt.graph.node if n.op_type in ("MatMul", "FusedMatMul") and n.input[1] in inits
             and len(kept) in inits[n.input[1]].dims]
    assert len(heads) == 1 and inits[heads[0].input[1]].data_type == onnx.TensorProto.FLOAT  # folded at load


def test_int8_weight_only_on_the_gqa_layout_quantizes_the_tied_lookup(tmp_path):
    """The gqa graph's embedding gathers columns of the tied head matrix: it becomes a row lookup of an int8 copy,
    so no fp32 copy of the matrix is left behind and smoothing may scale the head."""
    import onnx

    from tests.test_export import make_llama as make

    hf = make(tmp_path / "hf", seed=4)
    heldout = np.random.default_rng(5).integers(0, VOCAB, 800)
    run_export(hf, tmp_path / "gqa", heldout, MAX_LEN, CHUNK, "student", cache="gqa", **QUIET)
    rec = run_quantize(tmp_path / "gqa" / "model.onnx", hf, tmp_path / "q", heldout, CHUNK, "int8_wo", **QUIET)
    assert rec["precision"]["counts"] == {"int8": rec["precision"]["counts"]["int8"]} and rec["warnings"] == []
    m = onnx.load(str(tmp_path / "q" / "model.onnx"))
    assert not [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and VOCAB * 64 in
                [int(np.prod(i.dims))]]  # the [64, VOCAB] table in fp32
    assert "Transpose" not in {n.op_type for n in m.graph.node if "embed" in n.name}
    # the same quantization as on the full layout's graph, so the same fidelity up to kernel rounding
    run_export(hf, tmp_path / "full", heldout, MAX_LEN, CHUNK, "student", **QUIET)
    full = run_quantize(tmp_path / "full" / "model.onnx", hf, tmp_path / "qf", heldout, CHUNK, "int8_wo", **QUIET)
    assert abs(rec["fidelity"]["kl_mean"] - full["fidelity"]["kl_mean"]) < 0.25 * full["fidelity"]["kl_mean"]


@pytest.mark.parametrize("eight_bit", [(), ("lm_head",)])
def test_int4_on_the_gqa_layout_looks_the_embedding_up_in_the_heads_own_codes(tmp_path, eight_bit):
    """The tied head's MatMulNBits codes serve the embedding lookup too (one copy of the table, as genai's own
    int4 export has it), in standard ops that onnxruntime-web also runs: the rows it gathers are exactly the head's
    dequantized rows, 4-bit nibbles and zero points unpacked, or 8-bit with the implicit zero point."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgedistil.quantize.blockwise import dequantize
    from tests.test_export import make_llama as make

    hf = make(tmp_path / "hf", seed=4)
    heldout = np.random.default_rng(5).integers(0, VOCAB, 800)
    run_export(hf, tmp_path / "gqa", heldout, MAX_LEN, CHUNK, "student", cache="gqa", **QUIET)
    rec = run_quantize(tmp_path / "gqa" / "model.onnx", hf, tmp_path / "q", heldout, CHUNK, "int4", block_size=16,
                       eight_bit=eight_bit, **QUIET)
    bits = 8 if eight_bit else 4
    embed = by_node(rec, "embed")
    assert len(embed) == 1 and embed[0]["precision"] == f"int{bits}" and rec["warnings"] == []
    assert rec["fidelity"]["top1_agreement"] > 0.5  # the graph around the lookup still works
    m = onnx.load(str(tmp_path / "q" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert not [k for k, v in inits.items() if v.size == VOCAB * 64 and v.dtype == np.float32]  # no fp32 table
    lookup = {n.op_type for n in m.graph.node if "embed" in n.name}
    assert "GatherBlockQuantized" not in lookup and "Gather" in lookup
    head = next(n for n in m.graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    codes = inits[head.input[1]]  # [N, blocks, block * bits / 8]
    if bits == 4:
        codes = np.stack([codes & 15, codes >> 4], -1)
    codes = codes.reshape(codes.shape[0], -1).astype(np.float32)
    blocks = codes.shape[1] // 16
    scales = inits[head.input[2]].reshape(-1, blocks)
    if bits == 4:
        packed_zeros = inits[head.input[3]].reshape(len(codes), -1)
        zeros = np.stack([packed_zeros & 15, packed_zeros >> 4], -1).reshape(len(codes), -1)[:, :blocks]
    else:
        zeros = np.full_like(scales, 128)
    rows = dequantize(codes, scales, zeros.astype(np.float32), 16)
    # the lookup alone, cut out of the file, read on a few token ids
    looked_up = next(n for n in m.graph.node if n.op_type == "Reshape" and n.name.endswith("_rows")).output[0]
    onnx.utils.extract_model(str(tmp_path / "q" / "model.onnx"), str(tmp_path / "lookup.onnx"), ["input_ids"],
                             [looked_up])
    ids = np.array([[3, 0, VOCAB - 1, 17]], np.int32)  # the edgedistil io's ids
    out = ort.InferenceSession(str(tmp_path / "lookup.onnx")).run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(out.reshape(4, -1), rows[ids[0]], rtol=1e-6, atol=1e-6)


def test_smoothing_is_exact_in_fp32(source):
    import onnx
    import onnxruntime as ort

    from edgedistil.quantize.blockwise import calibrate, smooth_norm_inputs

    hf, src, heldout, root = source
    calib = calibrate(src, heldout, CHUNK)
    model = onnx.load(str(src))
    before = {i.name: onnx.numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    smoothed = smooth_norm_inputs(model, calib, 0.5)
    changed = [i.name for i in model.graph.initializer
               if not np.array_equal(onnx.numpy_helper.to_array(i), before[i.name])]
    # 2 layers x (input and post-attention norms) + the final norm, each with the MatMuls it feeds
    assert len([c for c in changed if "norm" in c]) == 5 and len(changed) == 5 + 2 * 5 + 1
    assert any(not np.allclose(smoothed.hessians[t], calib.hessians[t]) for t in calib.hessians)
    feed = {"input_ids": np.asarray([heldout[:CHUNK]], np.int32), "position": np.asarray([0], np.int32)}
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (onnx.load(str(src)), model)]
    for s in sessions:
        feed.update({i.name: np.zeros(i.shape, np.float32) for i in s.get_inputs() if "cache" in i.name})
    a, b = (s.run(["logits"], feed)[0] for s in sessions)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("text, key", [('[export]\ncache = "paged"\n', "cache"),
                                       ("[quantize]\nblock_size = 24\n", "block_size"),
                                       ("[quantize]\nkeep_float = [1]\n", "keep_float"),
                                       ('[quantize]\nrounding = "gptq4"\n', "rounding"),
                                       ("[quantize]\nint4_eight_bit = [1]\n", "int4_eight_bit")])
def test_recipe_rejects_bad_cache_layout_and_quantize_options(tmp_path, text, key):
    from edgedistil.config import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(EdgeError, match=key):
        load_recipe(path)


def test_top1_interval_is_wilson_and_recorded():
    import numpy as np

    from edgedistil.fidelity import logits_agreement, wilson_interval

    lo, hi = wilson_interval(312, 316)  # 0.9873 over 316 positions
    assert abs(lo - 0.9679) < 1e-3 and abs(hi - 0.9951) < 1e-3
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) == [0.0, 1.0]
    ref = np.random.default_rng(0).normal(size=(50, 7))
    got = ref.copy()
    got[:5] = got[:5, ::-1]  # five rows disagree
    a = logits_agreement(ref, got)
    assert a["top1_agreement_ci95"] == wilson_interval(int(round(a["top1_agreement"] * 50)), 50)
    assert a["top1_agreement_ci95"][0] < a["top1_agreement"] < a["top1_agreement_ci95"][1]


def _matmul_nbits_session(packed: dict, k: int, n: int, bits: int, block: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(arr, name) for name, arr in packed.items()]
    node = helper.make_node("MatMulNBits", ["x", *packed], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=1)  # fp32 compute: the packing alone is under test
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits, symmetric", [(4, False), (8, True)])
def test_matmul_nbits_packing_runs_as_the_dequantized_weights(bits, symmetric):
    from edgedistil.quantize.blockwise import dequantize, gptq, pack_matmul_nbits

    rng = np.random.default_rng(0)
    k, n, block = 40, 24, 16  # K not a multiple of the block: the last block is padded
    w = rng.normal(size=(n, k))
    codes, scales, zeros = gptq(w, None, bits, block, symmetric)
    deq = dequantize(codes, scales, zeros, block)
    # round to nearest: every weight within half a step of its grid point
    assert np.all(np.abs(w - deq) <= np.repeat(scales, block, 1)[:, :k] / 2 + 1e-9)
    x = rng.normal(size=(3, k)).astype(np.float32)
    got = _matmul_nbits_session(pack_matmul_nbits(codes, scales, zeros, bits, block, symmetric), k, n, bits,
                                block).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ deq.T.astype(np.float32), rtol=1e-4, atol=1e-4)


def test_gptq_lowers_the_layer_output_error_below_round_to_nearest():
    from edgedistil.quantize.blockwise import dequantize, gptq

    rng = np.random.default_rng(1)
    k, n, block = 64, 32, 32
    # correlated inputs with a few outlier channels, as after an RMSNorm
    x = rng.normal(size=(512, 8)) @ rng.normal(size=(8, k)) + 0.1 * rng.normal(size=(512, k))
    x[:, :3] *= 8
    w = rng.normal(size=(n, k))
    h = 2 * x.T @ x / len(x)

    def output_error(hessian):
        codes, scales, zeros = gptq(w, hessian, 4, block, symmetric=False)
        return np.linalg.norm(x @ (w - dequantize(codes, scales, zeros, block)).T)

    nearest = output_error(None)
    assert output_error(h) < 0.5 * nearest
    # with an identity Hessian no error moves between columns: GPTQ is round-to-nearest
    assert np.array_equal(gptq(w, np.eye(k), 4, block, False)[0], gptq(w, None, 4, block, False)[0])


def test_gptq_calibrates_between_the_fidelity_segments():
    from edgedistil.fidelity import fidelity_segments
    from edgedistil.quantize.blockwise import calibration_windows

    ids = np.arange(800)
    spans = fidelity_segments(len(ids), CHUNK, MAX_LEN)
    windows = calibration_windows(ids, CHUNK, MAX_LEN)
    assert len(spans) == 16 and len(windows) >= 15
    scored = {i for start, end in spans for i in range(start, end)}
    for w in windows:
        assert len(w) % CHUNK == 0 and 0 < len(w) <= MAX_LEN and not scored & set(w.tolist())


def test_int4_gptq_beats_round_to_nearest_and_records_it(source):
    hf, src, heldout, root = source
    every4 = dict(block_size=16, eight_bit=(), **QUIET)  # every MatMul 4-bit
    gptq_rec = run_quantize(src, hf, root / "int4-gptq", heldout, CHUNK, "int4", **every4)
    nearest = run_quantize(src, hf, root / "int4-rtn", heldout, CHUNK, "int4", rounding="nearest", **every4)
    assert gptq_rec["precision"]["counts"] == {"int4": 15, "int8": 1} and gptq_rec["int4_eight_bit"] == []
    assert gptq_rec["rounding"] == "gptq" and "gptq rounding" in gptq_rec["scheme"] and nearest["rounding"] == "nearest"
    assert gptq_rec["fidelity"]["kl_mean"] < nearest["fidelity"]["kl_mean"]
    with pytest.raises(EdgeError, match="GPTQ calibration"):
        run_quantize(src, hf, root / "int4-short", heldout[:100], CHUNK, "int4", **QUIET)
    assert not (root / "int4-short").exists()


def test_narrow_gptq_codes_stay_within_tflite_symmetric_int8():
    from edgedistil.quantize.blockwise import gptq

    rng = np.random.default_rng(2)
    x = rng.normal(size=(256, 48))
    w = rng.normal(size=(16, 48))
    codes, scales, zeros = gptq(w, 2 * x.T @ x / len(x), 8, 48, symmetric=True, narrow=True)
    signed = codes - zeros
    assert signed.min() >= -127 and signed.max() <= 127
    assert (np.abs(signed) == 127).any()  # the scale still spans the row
