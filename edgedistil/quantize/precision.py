"""Layer precision accounting: every weight-bearing MatMul/Gemm/Gather of a graph and the precision it ended in.

A quantizer can skip a layer silently (an unsupported shape, an op it does not handle); comparing the plan with
what the file holds is the only way to know. A layer is a node whose weight (MatMul/Gemm B, Gather data) is an
initializer, possibly behind a DequantizeLinear (QDQ) or in a quantized op's packed form.
"""

from __future__ import annotations

import re
from pathlib import Path

# op -> index of the input that holds the weight
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Gather": 0, "MatMulInteger": 1, "DynamicQuantizeMatMul": 1,
                "MatMulNBits": 1, "GatherBlockQuantized": 0, "QLinearMatMul": 3}
# what stands between a stored weight and its reader
STORAGE_OPS = ("DequantizeLinear", "Cast", "Mul", "Reshape", "Transpose")
_SUFFIX = re.compile(r"(_quantized|_Q\d+|_DQ_Q\d+|_fp16)$")


def _dtype_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "unknown"


def layer_precisions(path: Path | str) -> list[dict]:
    """One entry per weight-bearing node: `{node, op, weight, shape, precision}`, `weight` the source initializer
    name (quantizer suffixes stripped) so a quantized graph's entries line up with its float source's."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    producer = {out: n for n in m.graph.node for out in n.output}
    layers = []
    for n in m.graph.node:
        idx = WEIGHT_INPUT.get(n.op_type)
        if idx is None or len(n.input) <= idx:
            continue
        if _selects_rows(n, inits):
            continue  # storage, not a layer: a trimmed head's rows read from the embedding table
        name, via = n.input[idx], n.op_type
        # QDQ: the weight sits behind a DQ node; fp16 storage: behind a Cast to fp32; int8 storage: behind
        # Cast -> Mul(scales), a tied head then Reshape (its blocks) and Transpose, a trimmed head a Gather of its
        # rows (quantize/blockwise.py)
        while name not in inits and name in producer and (producer[name].op_type in STORAGE_OPS
                                                           or _selects_rows(producer[name], inits)):
            name, via = producer[name].input[0], producer[name].op_type
        if name not in inits:
            continue  # an activation (attention scores, cache reads), not a layer
        init = inits[name]
        if len(init.dims) < 2 or name.endswith("_scales"):
            continue  # index constants; the per-row scales a portable int8 lookup gathers beside its int8 rows
        layers.append({"node": n.name, "op": n.op_type, "weight": _SUFFIX.sub("", name), "shape": list(init.dims),
                       "precision": _precision(n, init, via)})
    return layers


def _selects_rows(node, inits) -> bool:
    """A Gather of constant ids out of a weight table: rows selected once, when the session loads."""
    return node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in inits and node.input[1] in inits


def _precision(node, init, via: str) -> str:
    if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return f"int{bits}"
    if init.name.endswith("_Q4"):  # a lookup of a 4-bit head's packed codes (quantize/blockwise.py)
        return "int4"
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "uint8": "int8", "int8": "int8",
            "int4": "int4", "uint4": "int4"}.get(_dtype_name(init.data_type), _dtype_name(init.data_type))


def precision_report(path: Path | str, intended: str, keep_float: list[str], eight_bit: tuple[str, ...] = ()) -> dict:
    """Account for every layer of the quantized graph at `path` against the plan: layers matching a `keep_float`
    pattern stay float on purpose, those matching an `eight_bit` one are meant to be int8; any other float layer
    was meant to be `intended` and is a warning."""
    layers = layer_precisions(path)
    warnings = []
    for layer in layers:
        kept = any(p in layer["node"] or p in layer["weight"] for p in keep_float)
        wide = layer["op"] == "MatMulNBits" and any(p in layer["node"] for p in eight_bit)
        layer["intended"] = "fp32" if kept else "int8" if wide else intended
        if not kept and layer["precision"] != layer["intended"] and layer["precision"] in ("fp32", "fp16", "bf16"):
            warnings.append(f"{layer['node']} ({layer['weight']}, {layer['op']}) stayed {layer['precision']}, "
                            f"meant to be {layer['intended']}")
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    return {"layers": layers, "counts": counts, "kept_float": keep_float,
            "unintended_float_layers": len(warnings), "warnings": warnings}
