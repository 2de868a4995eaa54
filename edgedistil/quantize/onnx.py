"""The quantize stage: model.onnx -> quantized model.onnx + verify.json against the fp32 PyTorch source.

Methods (onnxruntime.quantization; for MatMulNBits and GatherBlockQuantized, edgedistil's own rounding and packing in
quantize/blockwise.py):
- `int8`: dynamic quantization, weights int8 per output channel, activations quantized on the fly (MatMulInteger).
  The embedding table (Gather) is int8 too: with a large vocabulary it is most of a small student's bytes.
- `int8_static`: QDQ, weights per channel and activations with ranges calibrated on real decoding traces of
  held-out text (chunked prefill from position 0, then decode with the cache fed back): random positions or
  zero caches give ranges the model never sees.
- `int8_wo`: weight-only int8 MatMulNBits (bits 8, symmetric blocks of `block_size`, accuracy_level 4: activations
  quantized per block, not per tensor), and the embedding lookup int8 in blocks too (GatherBlockQuantized). Before
  rounding, SmoothQuant moves the RMSNorm outputs' outlier channels into the weights, where per-block activation
  quantization rounded them worst (the LM head's input most). The int8 method that holds the
  int8 floor at int8 speed on ONNX Runtime (scripts/bench_onnx_quant.py).
- `int8_storage`: int8 weights in the file, fp32 compute: each MatMul weight int8 in blocks of 32 inputs (GPTQ-rounded)
  behind Cast -> Mul -> Reshape, which ONNX Runtime folds into the fp32 weight when the session loads, and the embedding an
  int8 row lookup in standard ops. For onnxruntime-web, whose wasm int8 kernels are slower than its fp32 ones:
  there it decodes faster than `int8` and `int8_wo` and holds the int8 floor, for a larger renderer heap (the fp32
  weights) and a slower prefill (scripts/bench_web.py). Natively `int8_wo` is the one.
- `fp16`: weights stored in fp16, each behind a Cast to fp32, so the file halves and the I/O contract (fp32
  cache and logits) is unchanged; ONNX Runtime folds the Casts at load, so compute and memory stay fp32.
- `int4`: weight-only MatMulNBits, asymmetric blocks of `block_size` (default 32) along the input axis, every MatMul
  at 4 bits unless `eight_bit` names some (INT4_EIGHT_BIT). A tied embedding (the in-place gqa layout's column
  Gather on the head matrix) is looked up in the head's own packed codes, with standard ops, so the table is in the
  file once, as in onnxruntime-genai's own int4 export, and onnxruntime-web runs the file too; any other embedding
  is an int8 block lookup as in `int8_wo`.

MatMulNBits weights (int4, int8_wo) and int8_storage's are rounded with GPTQ, calibrated on held-out text between
the fidelity segments (quantize/blockwise.py), unless `rounding="nearest"`.

Layers named in `keep_float` (substrings of node or weight names, e.g. "lm_head") stay fp32 on purpose; every
other weight-bearing layer that ends in float is a warning in the record (`precision`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.export.onnx import op_histogram
from edgedistil.fidelity import floor_verdict, measure_fidelity
from edgedistil.model import load_hf_folder
from edgedistil.quantize import METHODS, PRECISION
from edgedistil.quantize.blockwise import (calibrate, quantize_gathers, quantize_matmuls, smooth_norm_inputs,
                                           store_matmuls_int8)
from edgedistil.quantize.precision import layer_precisions, precision_report
from edgedistil.records import sha256_file, versions
from edgedistil.runtimes.ort import OrtLM
from edgedistil.runtimes.torch_step import TorchLM

GPTQ_METHODS = ("int4", "int8_wo", "int8_storage")  # the methods `rounding` applies to
# Chosen per method from the per-layer sensitivity measured on the embedded default (docs/design.md, Quantization).
DEFAULT_KEEP_FLOAT: dict[str, list[str]] = {"int8": [], "int8_wo": [], "int8_storage": [], "int8_static": [],
                                             "int4": [], "fp16": []}
SCHEME = {
    "int8": "onnxruntime quantize_dynamic: MatMul and Gather weights int8 per channel, dynamic activations",
    "int8_static": "onnxruntime quantize_static QDQ: weight MatMuls int8 per channel, activations int8 calibrated "
                   "(MinMax) on held-out decoding traces from position 0",
    "int8_wo": "onnxruntime MatMulNBits: weight-only int8, symmetric, block {block_size} along K, accuracy_level 4, "
               "{rounding} rounding (with GPTQ: RMSNorm outputs smoothed first, and the embedding GatherBlockQuantized "
               "int8, block {block_size}; rounded to nearest, a tied embedding is looked up in the head's own codes)",
    "int8_storage": "int8 weights, a scale per 32 inputs of each output column, {rounding} rounding, behind Cast, Mul "
                    "and Reshape that ONNX Runtime folds to fp32 at load (fp32 compute); embedding int8 per row, gathered "
                    "with standard ops",
    "fp16": "weights fp16 behind Cast to fp32 (storage only: compute, cache and logits fp32)",
    "int4": "onnxruntime MatMulNBits: weight-only int4, asymmetric, block {block_size} along K, accuracy_level 4, "
            "{rounding} rounding; 8-bit layers: {eight_bit}; a tied embedding looked up in the head's own codes "
            "with standard ops (else int8 blocks)",
}


# SmoothQuant's migration strength for MatMulNBits at accuracy_level 4 (int8 activations), on every RMSNorm-fed
# MatMul; 0 = off. From scripts/bench_onnx_quant.py on the embedded default: int8_wo top-1 0.968 -> 0.980, and int4
# loses agreement with it.
SMOOTH_ALPHA = {"int8_wo": 0.5, "int4": 0.0}
# int4's layers kept at 8 bits (MatMulNBits either way). None: int4 is the file picked for size and speed, and on the
# embedded default no set holds the int4 floors (docs/results/onnx_int4_eight_bit.json: the LM head and down_proj at
# 8 bits, the default until 2026-12-07, top-1 0.870 against 0.839, in 59.9 MB against 42.2), while every 8-bit
# layer slows it: genai decoded them at 0.72-0.80x the all-4-bit file's speed (docs/results/genai_q4_candidates.json).
INT4_EIGHT_BIT: tuple[str, ...] = ()


def eight_bit_layers(method: str, eight_bit: tuple[str, ...] | None) -> tuple[str, ...]:
    """The node-name parts `method` quantizes at 8 bits among its MatMulNBits: int4's (None: INT4_EIGHT_BIT)."""
    return (INT4_EIGHT_BIT if eight_bit is None else tuple(eight_bit)) if method == "int4" else ()


def _nodes_matching(src: Path, patterns: list[str]) -> list[str]:
    return sorted({layer["node"] for layer in layer_precisions(src)
                   if any(p in layer["node"] or p in layer["weight"] for p in patterns)})


class _QuietQuantizer:
    """onnxruntime.quantization logs advice (pre-process, QDQ tips) at WARNING on the root logger; keep it out."""

    def __enter__(self):
        root = logging.getLogger()
        self.level, root.level = root.level, logging.ERROR

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self.level)


def calibration_feeds(src: Path, heldout_ids: np.ndarray, prefill_len: int, windows: int = 8,
                      decode_steps: int = 16) -> list[dict]:
    """Inputs of real decoding traces through the fp32 graph: a prefill chunk from position 0 on a held-out window,
    then decode steps with the cache it produced. Windows sit between the ones fidelity scores (half a stride off)."""
    lm = OrtLM(src)
    steps = min(decode_steps, lm.max_len - prefill_len)
    need = prefill_len + steps
    stride = max(need, (len(heldout_ids) - need) // windows)
    names = [o.name for o in lm.session.get_outputs()]
    # each cache input and the output that feeds it next step, in either layout ("full" or "gqa")
    cache_pairs = {i.name: i.name.replace("past_key_values.", "present.") if lm.layout == "gqa" else i.name + "_out"
                   for i in lm.session.get_inputs() if i.name not in ("input_ids", "position")}
    feeds = []
    for w in range(windows):
        start = w * stride + stride // 2
        seg = heldout_ids[start:start + need].tolist()
        if len(seg) < need:
            break
        caches = {i.name: np.zeros(i.shape, np.float32) for i in lm.session.get_inputs()
                  if i.name not in ("input_ids", "position")}
        for pos, ids in [(0, seg[:prefill_len])] + [(prefill_len + i, [t]) for i, t in enumerate(seg[prefill_len:])]:
            feed = {"input_ids": np.asarray([ids], np.int32), "position": np.asarray([pos], np.int32), **caches}
            feeds.append(feed)
            outputs = dict(zip(names, lm.session.run(names, feed)))
            caches = {name: outputs[out] for name, out in cache_pairs.items()}
    if not feeds:
        raise EdgeError(f"{len(heldout_ids)} held-out tokens are too few to calibrate int8_static",
                        "use a larger corpus or heldout_fraction, or another quantization method")
    return feeds


def fp16_weights(src: Path, dst: Path, excluded: list[str]) -> None:
    """Store every layer weight (not in `excluded` nodes) as fp16, read through a Cast to fp32."""
    import onnx
    from onnx import helper, numpy_helper

    weights = {layer["weight"] for layer in layer_precisions(src) if layer["node"] not in excluded}
    m = onnx.load(str(src))
    casts = []
    for init in m.graph.initializer:
        if init.name in weights and init.data_type == onnx.TensorProto.FLOAT:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
            casts.append(helper.make_node("Cast", [half.name], [init.name], name=f"{init.name}_cast",
                                          to=onnx.TensorProto.FLOAT))
            init.CopyFrom(half)
    nodes = casts + list(m.graph.node)  # Casts first, before their consumers: the graph stays sorted
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(dst))


def quantize_file(src: Path, dst: Path, method: str, keep_float: list[str], block_size: int,
                  heldout_ids: np.ndarray, prefill_len: int, accuracy_level: int = 4, rounding: str = "gptq",
                  smooth_alpha: float | None = None, eight_bit: tuple[str, ...] | None = None) -> dict:
    """Write the `method` quantization of `src` to `dst`. `accuracy_level` is MatMulNBits' (int4, int8_wo): 4
    quantizes activations per block; 1 computes in fp32, which ONNX Runtime 1.32 runs slowly for 8 bits
    (scripts/bench_onnx_quant.py), so the stage keeps 4. `rounding` ("gptq" or "nearest") is theirs too, and
    with GPTQ `smooth_alpha` (None: the method's SMOOTH_ALPHA, 0: off) migrates activation outliers into the weights
    first; int4 keeps the `eight_bit` layers (None: INT4_EIGHT_BIT) at 8 bits. Returns what calibration did
    (empty for the methods without it)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    excluded = _nodes_matching(src, keep_float)
    calibration: dict = {}
    with _QuietQuantizer():
        if method == "int8":
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gather"], per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
        elif method == "int8_static":
            feeds = calibration_feeds(src, heldout_ids, prefill_len)
            # a column Gather (the gqa layout's shared embedding) has no per-axis QDQ in ORT: it stays float,
            # and the precision accounting reports it
            excluded += [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
                         if n.op_type == "Gather" and any(a.name == "axis" and a.i != 0 for a in n.attribute)]

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(feeds)

                def get_next(self):
                    return next(self.it, None)

            # MatMulConstBOnly: the attention matmuls (scores, weighted values) stay float; quantizing them per
            # tensor costs accuracy for no size gain.
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gather"], per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                            extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False})
        elif method == "fp16":
            fp16_weights(src, dst, excluded)
        elif method in ("int4", "int8_wo"):
            model = onnx.load(str(src))
            alpha = (SMOOTH_ALPHA[method] if smooth_alpha is None else smooth_alpha) if rounding == "gptq" else 0
            if alpha:
                # the embedding lookup int8 blocks first, so it no longer shares a tied head's matrix, which
                # smoothing scales
                quantize_gathers(model, block_size, excluded)
            hessians = None
            if rounding == "gptq":
                calib = calibrate(src, heldout_ids, prefill_len)
                calib = smooth_norm_inputs(model, calib, alpha) if alpha else calib
                hessians = calib.hessians
                calibration = {"tokens": calib.tokens, "smooth_alpha": alpha,
                               "smoothed_inputs": list(calib.smoothed)}
            packed = quantize_matmuls(model, 4 if method == "int4" else 8, block_size, accuracy_level, excluded,
                                      hessians, eight_bit_layers(method, eight_bit))
            if not alpha:
                # a tied head's lookup reads the head's own codes (one copy); any other table (an untied or
                # trimmed head's embedding) int8 rows in standard ops: Transformers.js' onnxruntime-web has no
                # GatherBlockQuantized
                quantize_gathers(model, block_size, excluded, portable=True, packed=packed)
            onnx.save(model, str(dst))
        elif method == "int8_storage":
            model = onnx.load(str(src))
            calib = calibrate(src, heldout_ids, prefill_len) if rounding == "gptq" else None
            if calib is not None:
                calibration = {"tokens": calib.tokens, "smooth_alpha": 0, "smoothed_inputs": []}
            # the MatMuls first: a tied head's int8 rows then serve the embedding lookup too (one copy in the file)
            shared = store_matmuls_int8(model, excluded, calib and calib.hessians)
            quantize_gathers(model, block_size, excluded, portable=True, shared=shared)
            onnx.save(model, str(dst))
    return calibration


def run_quantize(src_onnx: Path, source_model_dir: Path, out_dir: Path, heldout_ids: np.ndarray, prefill_len: int,
                 method: str = "int8", log=print, block_size: int = 32, keep_float: list[str] | None = None,
                 rounding: str = "gptq", eight_bit: tuple[str, ...] | None = None) -> dict:
    if method not in METHODS:
        raise EdgeError(f"unknown quantization '{method}'", f"use one of: {', '.join(METHODS)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise EdgeError(f"int4 block_size {block_size} is not a power of two >= 16",
                        "use 16, 32 (the default), 64 or 128")
    keep_float = DEFAULT_KEEP_FLOAT[method] if keep_float is None else list(keep_float)
    src_onnx = Path(src_onnx)
    if not src_onnx.is_file():
        raise EdgeError(f"ONNX model {src_onnx} does not exist", "run `edgedistil export` first")
    reference = OrtLM(src_onnx)  # also rejects a corrupt source before quantizing it
    with atomic_dir(out_dir) as tmp:
        path = tmp / "model.onnx"
        t0 = time.perf_counter()
        eight_bit = eight_bit_layers(method, eight_bit)
        calibration = quantize_file(src_onnx, path, method, keep_float, block_size, heldout_ids, prefill_len,
                                    rounding=rounding, eight_bit=eight_bit)
        seconds = time.perf_counter() - t0
        precision = precision_report(path, PRECISION[method], keep_float, eight_bit)
        model = load_hf_folder(source_model_dir, max_len=reference.max_len).eval()
        fidelity = measure_fidelity(TorchLM(model, reference.max_len), OrtLM(path), heldout_ids, prefill_len)
        floors = floor_verdict(fidelity, PRECISION[method])
        fidelity["meets_floors"] = floors["passed"]
        write_json(tmp / "verify.json", fidelity)
        record = {
            "stage": "quantize", "method": method,
            "scheme": SCHEME[method].format(block_size=block_size, rounding=rounding,
                                            eight_bit=", ".join(eight_bit) or "none"),
            "block_size": block_size if method in ("int4", "int8_wo") else None,
            "rounding": rounding if method in GPTQ_METHODS else None,
            "int4_eight_bit": list(eight_bit) if method == "int4" else None,
            "calibration": calibration or None,  # GPTQ: held-out tokens read, smoothing strength, inputs smoothed
            "source": {"file": str(src_onnx), "sha256": sha256_file(src_onnx)},
            "file": "model.onnx", "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "source_bytes": src_onnx.stat().st_size, "quantize_seconds": round(seconds, 2),
            "ops": op_histogram(path), "fidelity": fidelity, "fidelity_reference": "fp32 PyTorch model",
            "floors": floors, "precision": precision, "warnings": precision["warnings"], "versions": versions(),
        }
        write_json(tmp / "record.json", record)
    for w in precision["warnings"] + floors["failures"]:
        log(f"quantize[{method}]: warning: {w}")
    log(f"quantize[{method}]: {record['source_bytes'] / 1e6:.1f} -> {record['bytes'] / 1e6:.1f} MB; vs fp32 "
        f"PyTorch: top-1 {fidelity['top1_agreement']:.3f}, KL {fidelity['kl_mean']:.4f}, perplexity "
        f"{fidelity['perplexity_change']:+.2%}, greedy "
        f"{fidelity['greedy_tokens_matching']}/{fidelity['greedy_tokens']}")
    return record
