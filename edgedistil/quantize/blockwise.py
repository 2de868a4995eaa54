"""Block-wise weight quantization for ONNX Runtime's MatMulNBits and GatherBlockQuantized: GPTQ rounding and
SmoothQuant smoothing, calibrated on held-out text.

Round-to-nearest puts each weight on its nearest grid point; GPTQ (Frantar et al., 2022) rounds one input column
at a time and moves the rounding error onto the columns not yet rounded, weighted by the inverse Hessian of the
layer's inputs (H = 2 X^T X over calibration activations), so the layer's output error is what it minimises, not
each weight's. On the embedded default (scripts/bench_onnx_quant.py) it is the difference between int4 missing its
KL floor 20x and meeting it. MatMulNBits at accuracy_level 4 also rounds activations to int8 per block; SmoothQuant
(smooth_norm_inputs) divides each RMSNorm output channel by s and multiplies the weight rows it meets by s, exact
in fp32, so outlier channels no longer set a whole block's activation scale.

Everything happens on the ONNX graph, so it works for either cache layout and for any exporter's names: the
inputs of each weight MatMul are tapped as extra graph outputs and read while the fp32 graph runs chunked
prefill over held-out windows that lie between the segments fidelity scores (never on them). GPTQ treats each
output row independently given H, so a MatMul that packs q/k/v (or gate/up) is quantized exactly as its parts.
The codes are packed here in MatMulNBits' layout (per output row, blocks of `block_size` along the input axis, 4-bit
codes two to a byte, low nibble first), with symmetric 8-bit (zero point 128, implicit) and asymmetric 4-bit
(explicit zero points).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedistil.errors import EdgeError
from edgedistil.fidelity import fidelity_segments


def weight_matmuls(model) -> list:
    """The MatMul nodes whose B input is an initializer (the layers; attention's own MatMuls read activations)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def calibration_windows(heldout_ids: np.ndarray, chunk: int, max_len: int, segments: int = 16) -> list[np.ndarray]:
    """Held-out windows between the fidelity segments, each a whole number of prefill chunks (at most max_len)."""
    spans = fidelity_segments(len(heldout_ids), chunk, max_len, segments) + [(len(heldout_ids), len(heldout_ids))]
    windows = []
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        length = min(max_len, next_start - end) // chunk * chunk
        if length:
            windows.append(np.asarray(heldout_ids[end:end + length]))
    return windows


@dataclass
class Calibration:
    """Per distinct input X of a weight MatMul: H = 2/n X^T X (GPTQ) and each channel's largest |x| (smoothing)."""
    hessians: dict[str, np.ndarray]
    absmax: dict[str, np.ndarray]
    tokens: int
    smoothed: tuple[str, ...] = ()  # the inputs smooth_norm_inputs rescaled


def calibrate(src: Path, heldout_ids: np.ndarray, chunk: int, min_tokens: int = 256) -> Calibration:
    """Run `src` (fp32) by chunked prefill over the calibration windows, the cache fed back so attention outputs
    see real context, and read every weight MatMul's input."""
    import onnx
    from onnx import TensorProto, helper

    from edgedistil.runtimes.ort import OrtLM

    model = onnx.load(str(src))
    taps = sorted({n.input[0] for n in weight_matmuls(model)})
    for name in taps:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sums: dict[str, np.ndarray] = {}
    absmax: dict[str, np.ndarray] = {}
    tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, str(Path(tmp) / "taps.onnx"))
        lm = OrtLM(Path(tmp) / "taps.onnx")
        for window in calibration_windows(heldout_ids, chunk, lm.max_len):
            cache = lm.empty_cache()
            for pos in range(0, len(window), chunk):
                _, cache, acts = lm.step_with_taps(window[pos:pos + chunk].tolist(), pos, cache, taps)
                for name, x in acts.items():
                    x = x.reshape(-1, x.shape[-1])
                    # one chunk's products in float32 (64 rows), their sum over chunks in float64
                    sums[name] = sums.get(name, 0) + (x.T @ x).astype(np.float64)
                    absmax[name] = np.maximum(absmax.get(name, 0), np.abs(x).max(0))
                tokens += chunk
    if tokens < min_tokens:
        raise EdgeError(f"{len(heldout_ids)} held-out tokens leave {tokens} for GPTQ calibration (needs "
                        f"{min_tokens})", "use a larger corpus or heldout_fraction, or rounding = \"nearest\"")
    return Calibration({name: 2.0 * s / tokens for name, s in sums.items()}, absmax, tokens)


def gptq(weight: np.ndarray, hessian: np.ndarray | None, bits: int, block_size: int, symmetric: bool,
         damp: float = 0.01, narrow: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round `weight` [N out, K in] to `bits` in blocks of `block_size` along K. `hessian` None rounds to nearest.
    Returns codes [N, K] (unsigned, 0..2^bits-1), scales and zero points [N, ceil(K / block_size)];
    weight ~= (codes - zero_point) * scale blockwise. `narrow` (symmetric only) leaves out the lowest code, so the
    signed codes span -(2^(bits-1) - 1)..2^(bits-1) - 1, as TFLite's 8-bit symmetric weights do."""
    import torch

    w = torch.from_numpy(np.asarray(weight, np.float64)).clone()
    n, k = w.shape
    if hessian is None:
        hinv = torch.eye(k, dtype=torch.float64)  # no error feedback: round to nearest
    else:
        h = torch.from_numpy(np.asarray(hessian, np.float64)).clone()
        dead = torch.diag(h) == 0  # an input that is always 0: its weights cannot matter
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
        h += damp * torch.diag(h).mean() * torch.eye(k, dtype=torch.float64)
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    # the inverse in float64, the column sweep in float32 (as GPTQ's reference code): twice as fast; on the
    # default 99.95% of the int8 codes come out the same
    w, hinv = w.float(), hinv.float()
    levels = 2 ** bits - 1
    lowest = 1 if narrow and symmetric else 0
    groups = -(-k // block_size)
    codes = torch.zeros(n, k, dtype=torch.int64)
    scales = torch.zeros(n, groups, dtype=torch.float32)
    zeros = torch.zeros(n, groups, dtype=torch.int64)
    lazy = 128  # columns updated together before the error reaches the rest of the matrix
    for c1 in range(0, k, lazy):
        c2 = min(c1 + lazy, k)
        w1, err1, hinv1 = w[:, c1:c2].clone(), torch.zeros(n, c2 - c1, dtype=torch.float32), hinv[c1:c2, c1:c2]
        for i in range(c2 - c1):
            col, g = c1 + i, (c1 + i) // block_size
            if col % block_size == 0:  # a new block: its scale from the weights as the error has left them
                block = w1[:, i:i + block_size]
                if block.shape[1] < min(block_size, k - col):
                    # a block longer than the window: its tail from w, which lacks only this window's updates
                    block = torch.cat([block, w[:, c2:col + block_size]], 1)
                if symmetric:
                    scales[:, g] = block.abs().amax(1).clamp(min=1e-12) / (2 ** (bits - 1) - 1)
                    zeros[:, g] = 2 ** (bits - 1)
                else:
                    lo, hi = block.amin(1).clamp(max=0), block.amax(1).clamp(min=0)
                    scales[:, g] = ((hi - lo) / levels).clamp(min=1e-12)
                    zeros[:, g] = torch.round(-lo / scales[:, g]).clamp(0, levels).to(torch.int64)
            q = torch.clamp(torch.round(w1[:, i] / scales[:, g]) + zeros[:, g], lowest, levels)
            codes[:, col] = q.to(torch.int64)
            err = (w1[:, i] - (q - zeros[:, g]) * scales[:, g]) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, c2:] -= err1 @ hinv[c1:c2, c2:]
    return codes.numpy(), scales.numpy(), zeros.numpy()


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, block_size: int) -> np.ndarray:
    k = codes.shape[1]
    return (codes - np.repeat(zeros, block_size, 1)[:, :k]) * np.repeat(scales, block_size, 1)[:, :k]


def pack_matmul_nbits(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, block_size: int,
                      symmetric: bool) -> dict[str, np.ndarray]:
    """MatMulNBits' inputs: B [N, blocks, block_size * bits / 8] uint8, scales [N * blocks] fp32, and for asymmetric
    weights zero_points [N * ceil(blocks * bits / 8)] uint8 (4-bit: two per byte, low nibble first)."""
    n, k = codes.shape
    groups = scales.shape[1]
    padded = np.repeat(zeros, block_size, 1).astype(np.uint8)  # padding columns hold the zero point: value 0
    padded[:, :k] = codes
    b = padded.reshape(n, groups, block_size)
    if bits == 4:
        b = b[..., 0::2] | (b[..., 1::2] << 4)
    packed = {"B": np.ascontiguousarray(b, np.uint8), "scales": scales.astype(np.float32).reshape(-1)}
    if not symmetric:
        z = zeros.astype(np.uint8)
        if bits == 4:
            z = np.concatenate([z, np.zeros((n, groups % 2), np.uint8)], 1)
            z = z[:, 0::2] | (z[:, 1::2] << 4)
        packed["zero_points"] = np.ascontiguousarray(z, np.uint8).reshape(-1)
    return packed


def _replace_weight_matmuls(model, excluded: list[str], replace) -> None:
    """Call `replace(node, weight)` for each weight MatMul of `model` not in `excluded`, `weight` its B as
    [N out, K in] (ONNX MatMul B is [K, N]; GPTQ rows are outputs); it returns the nodes and initializers that
    stand in for the node."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, added = [], []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.name in excluded:
            nodes.append(node)
            continue
        new_nodes, new_inits = replace(node, numpy_helper.to_array(inits[node.input[1]]).T)
        nodes += new_nodes
        added += new_inits
    _rewrite(model, nodes, added)


def quantize_matmuls(model, bits: int, block_size: int, accuracy_level: int, excluded: list[str],
                     hessians: dict[str, np.ndarray] | None, eight_bit: tuple[str, ...] = ()) -> dict[str, dict]:
    """Replace every weight MatMul of `model` (an onnx ModelProto, changed in place) not in `excluded` by
    MatMulNBits, GPTQ-rounded when `hessians` are given, else rounded to nearest; nodes whose name holds a part in
    `eight_bit` get 8 bits whatever `bits` is. A weight another node still reads (a tied embedding's Gather) is
    kept for that node. Returns {weight: its packed initializers' names, bits, block_size, N, K}, for
    quantize_gathers to look a tied embedding up in the head's own codes."""
    from onnx import helper, numpy_helper

    packed_weights: dict[str, dict] = {}

    def replace(node, weight):
        a, b = node.input
        nbits = 8 if any(p in node.name for p in eight_bit) else bits
        symmetric = nbits == 8  # 4-bit: a zero point per block buys the asymmetric range (docs/benchmarks.md)
        n_out, k_in = weight.shape
        codes, scales, zeros = gptq(weight, None if hessians is None else hessians[a], nbits, block_size, symmetric)
        packed = pack_matmul_nbits(codes, scales, zeros, nbits, block_size, symmetric)
        names = {"B": f"{b}_Q{nbits}", "scales": f"{b}_scales", "zero_points": f"{b}_zero_points"}
        packed_weights[b] = {**{key: names[key] for key in packed}, "bits": nbits, "block_size": block_size,
                             "N": n_out, "K": k_in}
        return ([helper.make_node("MatMulNBits", [a] + [names[key] for key in packed], list(node.output),
                                  name=f"{node.name}_Q{nbits}", domain="com.microsoft", K=k_in, N=n_out, bits=nbits,
                                  block_size=block_size, accuracy_level=accuracy_level)],
                [numpy_helper.from_array(arr, names[key]) for key, arr in packed.items()])

    _replace_weight_matmuls(model, excluded, replace)
    return packed_weights


# int8_storage rounds each MatMul weight with a scale per block of this many inputs (K) of each output column. One
# scale per column took the 11-layer default under the int8 top-1 floor (0.975 against the fp32 student; blocks:
# 0.983, docs/benchmarks.md "int8 storage: block scales"), for 1/8 more bytes than the int8 codes (fp32 scales) and one
# more folded Reshape at load. The tied embedding / head table keeps a scale per row: blocks there did not help.
INT8_STORAGE_BLOCK = 32


def _int8_rows(weight: np.ndarray, hessian: np.ndarray | None, block: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`weight` [N, K] as symmetric int8 codes [N, K] and fp32 scales: one per row [N, 1], or with `block` (a
    divisor of K) one per block of `block` columns, codes [N, K / block, block] and scales [N, K / block, 1]."""
    n, k = weight.shape
    block = block if block and k % block == 0 else k
    codes, scales, zeros = gptq(weight, hessian, 8, block, symmetric=True)
    codes, scales = (codes - np.repeat(zeros, block, 1)).astype(np.int8), scales.astype(np.float32)
    if block == k:
        return codes, scales
    return codes.reshape(n, k // block, block), scales.reshape(n, k // block, 1)


def row_finder(table: np.ndarray):
    """For `table` [V, H], a function that gives the ids of the table rows that the rows of a `weight` [K, H]
    (K < V) are, in order, or None where one is not a row of it. Matched on a hash of each row's bits (integer
    arithmetic: the same row always gets the same key; the table's keys computed once), then checked exactly."""
    mix = np.random.default_rng(0).integers(1, 2 ** 63, table.shape[1], dtype=np.uint64) | np.uint64(1)

    def keys(rows):  # wraps modulo 2^64
        return (np.ascontiguousarray(rows).view(f"u{rows.itemsize}").astype(np.uint64) * mix).sum(1)

    table_keys = keys(table)
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]

    def find(weight: np.ndarray) -> np.ndarray | None:
        if weight.ndim != 2 or weight.shape[1] != table.shape[1] or len(weight) >= len(table) or \
                weight.dtype != table.dtype:
            return None
        ids = order[np.clip(np.searchsorted(sorted_keys, keys(weight)), 0, len(table) - 1)]
        return ids if np.array_equal(table[ids], weight) else None

    return find


def store_matmuls_int8(model, excluded: list[str], hessians: dict[str, np.ndarray] | None) -> dict[str, tuple]:
    """Store every weight MatMul's B of `model` (changed in place) not in `excluded` as int8, a scale per block of
    INT8_STORAGE_BLOCK inputs of each output column, behind Cast -> Mul(scales) -> Reshape: all constant, so ONNX
    Runtime folds them into the fp32 weight when the session loads. The file is int8, compute is fp32: for runtimes
    whose int8 kernels are slower than their fp32 ones (onnxruntime-web: wasm has no int8 dot product). Each folded
    node is one more transient fp32 copy of a weight in a wasm heap that never shrinks, which is why there are no
    more of them. GPTQ-rounded when `hessians` are given.

    A head whose weight is an embedding table (tied embeddings: a row Gather of a second copy, or in the gqa
    layouts a column Gather of the head's own matrix) is stored once, as the table's int8 rows with a scale per row,
    read through a Transpose; so is a trimmed head, whose rows are some of the table's, read through a constant
    Gather of their ids. Returns {table: (codes, scales)} for quantize_gathers to look the embedding up in the same
    int8 rows."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    gathers = [(n.input[0], next((a.i for a in n.attribute if a.name == "axis"), 0)) for n in model.graph.node
               if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
    tables = {t: numpy_helper.to_array(inits[t]) for t, axis in gathers if axis == 0}
    finders = {t: row_finder(table) for t, table in tables.items()}  # a trimmed head's rows among a table's
    # the gqa layouts read the head's own [K, N] matrix with a column Gather: the same table, already shared
    column_tables = {t for t, axis in gathers if axis == 1}
    shared: dict[str, tuple] = {}

    def replace(node, weight):
        a, b = node.input
        hessian = None if hessians is None else hessians[a]
        tied = b if b in column_tables and b not in shared else next(
            (t for t, table in tables.items() if t not in shared and table.shape == weight.shape
             and np.array_equal(table, weight)), None)
        # a trimmed head (distill/head.py): its K rows are some of the embedding table's, read from them by id
        subset = None if tied is not None else next(
            ((t, ids) for t in tables if t not in shared for ids in [finders[t](weight)] if ids is not None), None)
        if tied is not None or subset is not None:
            table, ids = (tied, None) if tied is not None else subset
            if ids is None:
                codes, scales = _int8_rows(weight, hessian)
            else:
                codes, scales = _int8_rows(tables[table], None)
                codes[ids], scales[ids] = _int8_rows(weight, hessian)  # the head's rows GPTQ-rounded for the head
            q, sc = shared[table] = (f"{table}_Q8", f"{table}_scales")
            nodes, added = [], [numpy_helper.from_array(codes, q), numpy_helper.from_array(scales, sc)]  # [V, K] [V, 1]
            if ids is not None:  # constant Gathers: they fold at load like the rest
                nodes = [helper.make_node("Gather", [q, f"{b}_ids"], [f"{b}_q8"], name=f"{b}_gather", axis=0),
                         helper.make_node("Gather", [sc, f"{b}_ids"], [f"{b}_row_scales"], name=f"{b}_gather_scales",
                                          axis=0)]
                added.append(numpy_helper.from_array(ids.astype(np.int64), f"{b}_ids"))
                q, sc = f"{b}_q8", f"{b}_row_scales"
            return (nodes + [
                helper.make_node("Cast", [q], [f"{b}_f32"], name=f"{b}_cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{b}_f32", sc], [f"{b}_rows"], name=f"{b}_scale"),
                helper.make_node("Transpose", [f"{b}_rows"], [f"{b}_dequantized"], name=f"{b}_transpose", perm=[1, 0]),
                helper.make_node("MatMul", [a, f"{b}_dequantized"], list(node.output), name=node.name)], added)
        codes, scales = _int8_rows(weight, hessian, INT8_STORAGE_BLOCK)
        q, sc = f"{b}_Q8", f"{b}_scales"
        if codes.ndim == 2:
            return ([helper.make_node("Cast", [q], [f"{b}_f32"], name=f"{b}_cast", to=TensorProto.FLOAT),
                     helper.make_node("Mul", [f"{b}_f32", sc], [f"{b}_dequantized"], name=f"{b}_scale"),
                     helper.make_node("MatMul", [a, f"{b}_dequantized"], list(node.output), name=node.name)],
                    [numpy_helper.from_array(codes.T.copy(), q),  # [K, N]
                     numpy_helper.from_array(scales.T.copy(), sc)])  # [1, N]
        # [N, G, B] codes, [N, G, 1] scales -> [G, B, N] and [G, 1, N], unblocked to B's [K, N]
        return ([helper.make_node("Cast", [q], [f"{b}_f32"], name=f"{b}_cast", to=TensorProto.FLOAT),
                 helper.make_node("Mul", [f"{b}_f32", sc], [f"{b}_blocks"], name=f"{b}_scale"),
                 helper.make_node("Reshape", [f"{b}_blocks", f"{b}_shape"], [f"{b}_dequantized"],
                                  name=f"{b}_unblock"),
                 helper.make_node("MatMul", [a, f"{b}_dequantized"], list(node.output), name=node.name)],
                [numpy_helper.from_array(codes.transpose(1, 2, 0).copy(), q),
                 numpy_helper.from_array(scales.transpose(1, 2, 0).copy(), sc),
                 numpy_helper.from_array(np.array(weight.shape[::-1], np.int64), f"{b}_shape")])

    _replace_weight_matmuls(model, excluded, replace)
    return shared


def _readers(model) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    return readers


def _rewrite(model, nodes: list, added: list) -> None:
    """Give `model` the node list `nodes` and the new initializers `added`, dropping the initializers no node reads
    any more (a weight still read by another node, such as a tied embedding's Gather, stays), and importing the
    contrib opset if a node needs it."""
    from onnx import helper

    still_read = {x for n in nodes for x in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in still_read]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    contrib = any(n.domain == "com.microsoft" for n in nodes)
    if contrib and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def smooth_norm_inputs(model, calib: Calibration, alpha: float = 0.5) -> Calibration:
    """SmoothQuant (Xiao et al., 2022) where it is free: for a MatMul input X = x_hat * g (an RMSNorm's output,
    g its weight), divide g by s and multiply the weight rows by s, with s_j = max|X_j|^alpha / max|W_j|^(1-alpha).
    Exact in fp32; it evens out the outlier channels that per-block int8 activation quantization rounds worst.
    Skipped where g or a weight has another reader (a tied embedding's Gather). Returns the calibration of the
    smoothed inputs."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    readers = _readers(model)
    producer = {out: n for n in model.graph.node for out in n.output}
    hessians, absmax = dict(calib.hessians), dict(calib.absmax)
    for tap in calib.hessians:
        mul, users = producer.get(tap), [u for u in readers.get(tap, []) if u.op_type != "Shape"]  # values unread
        if mul is None or mul.op_type != "Mul" or not users:
            continue
        gain = next((x for x in mul.input if x in inits and len(inits[x].dims) == 1), None)
        if gain is None or len(readers[gain]) != 1:
            continue
        if not all(u.op_type == "MatMul" and u.input[0] == tap and u.input[1] in inits and len(readers[u.input[1]]) == 1
                   for u in users):
            continue
        weights = [numpy_helper.to_array(inits[u.input[1]]) for u in users]  # [K, N] each
        wmax = np.max([np.abs(w).max(1) for w in weights], 0)
        s = np.clip(np.maximum(absmax[tap], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-2, 1e2)
        g = numpy_helper.to_array(inits[gain])
        inits[gain].CopyFrom(numpy_helper.from_array((g / s).astype(g.dtype), gain))
        for u, w in zip(users, weights):
            inits[u.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype), u.input[1]))
        hessians[tap] = calib.hessians[tap] / np.outer(s, s)
        absmax[tap] = calib.absmax[tap] / s
    return Calibration(hessians, absmax, calib.tokens,
                       tuple(t for t in calib.hessians if hessians[t] is not calib.hessians[t]))


def quantize_gathers(model, block_size: int, excluded: list[str], portable: bool = False,
                     shared: dict[str, tuple] | None = None, packed: dict[str, dict] | None = None) -> None:
    """Replace each embedding lookup of `model` (changed in place) not in `excluded` by GatherBlockQuantized: int8,
    symmetric blocks of `block_size` along the hidden axis, like the MatMul weights. `portable`: standard ops
    instead, which any ONNX runtime runs: the int8 row and its scale are gathered and multiplied after a Cast, one
    scale per row, so the table stays int8 in memory; a table in `shared` (from store_matmuls_int8: a tied head's
    int8 rows) is looked up there instead of quantized again.
    A row Gather (axis 0) swaps one for one; the gqa layout's column Gather on the tied head matrix, followed by
    the Transpose that moves the gathered axis first, becomes a row lookup of an int8 copy of that matrix
    (GatherBlockQuantized gathers uint8 data on axis 0 only). A column Gather on a head matrix in `packed` (from
    quantize_matmuls, the head already MatMulNBits) looks up the head's own codes instead, at its bits, in standard
    ops: one copy of the table in the file, as onnxruntime-genai's int4 export has it, and one every runtime runs."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    readers = _readers(model)
    folded, nodes, added = set(), [], []  # folded: outputs of the Transposes a row lookup replaces
    for node in model.graph.node:
        if node.output[0] in folded:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type != "Gather" or node.input[0] not in inits or node.name in excluded or node.input[1] in inits:
            # (constant ids: a trimmed head's rows selected from a table already stored, not a lookup)
            nodes.append(node)
            continue
        table, output = numpy_helper.to_array(inits[node.input[0]]), node.output[0]
        if axis == 1:
            after = readers.get(output, [])
            moves_gathered_axis_first = len(after) == 1 and after[0].op_type == "Transpose" and \
                [list(a.ints) for a in after[0].attribute if a.name == "perm"] == [[1, 2, 0]]
            if not moves_gathered_axis_first:
                nodes.append(node)
                continue
            table, output = table.T, after[0].output[0]
            folded.add(output)
        elif axis != 0:
            nodes.append(node)
            continue
        base = node.input[0] + ("_rows" if axis == 1 else "")
        head = (packed or {}).get(node.input[0]) if axis == 1 else None
        if head is not None and head["K"] % head["block_size"] == 0:
            new_nodes, new_inits = _gather_packed_head(node, head, output)
            nodes += new_nodes
            added += new_inits
            continue
        if portable:
            tied = (shared or {}).get(node.input[0])  # rows of the table, for a row or a column Gather alike
            q, sc = tied or (f"{base}_Q8", f"{base}_scales")
            if tied is None:
                codes, scales = _int8_rows(table, None)
                added += [numpy_helper.from_array(codes, q), numpy_helper.from_array(scales, sc)]
            ids = node.input[1]
            nodes += [helper.make_node("Gather", [q, ids], [f"{output}_q8"], name=f"{node.name}_Q8"),
                      helper.make_node("Gather", [sc, ids], [f"{output}_scale"],
                                       name=f"{node.name}_scale"),
                      helper.make_node("Cast", [f"{output}_q8"], [f"{output}_f32"], name=f"{node.name}_cast",
                                       to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"{output}_f32", f"{output}_scale"], [output],
                                       name=f"{node.name}_dequantize")]
            continue
        codes, scales, zeros = gptq(table, None, 8, block_size, symmetric=True)
        packed = pack_matmul_nbits(codes, scales, zeros, 8, block_size, symmetric=True)
        rows, width = table.shape
        added += [numpy_helper.from_array(packed["B"].reshape(rows, -1)[:, :width].copy(), f"{base}_Q8"),
                  numpy_helper.from_array(packed["scales"].reshape(rows, -1), f"{base}_scales")]
        nodes.append(helper.make_node("GatherBlockQuantized", [f"{base}_Q8", node.input[1], f"{base}_scales"],
                                      [output], name=f"{node.name}_Q8", domain="com.microsoft", bits=8,
                                      block_size=block_size, gather_axis=0, quantize_axis=1))
    _rewrite(model, nodes, added)


def _gather_packed_head(node, head: dict, output: str) -> tuple[list, list]:
    """The embedding lookup `node` (a column Gather on the tied head matrix) as a row lookup of the head's own
    MatMulNBits codes, in standard ops so that every ONNX runtime runs it (onnxruntime-web has no
    GatherBlockQuantized): the rows' codes, scales and zero points are gathered, 4-bit codes split into nibbles
    (low first), and dequantized as MatMulNBits does. Returns the nodes and their constant initializers."""
    from onnx import TensorProto, helper, numpy_helper

    base, bits = node.input[0] + "_rows", head["bits"]
    n_rows, blocks, block = head["N"], head["K"] // head["block_size"], head["block_size"]
    consts = {"scales_shape": [n_rows, blocks], "zeros_shape": [n_rows, -(-blocks * bits // 8)],
              "column": [0, 0, 0, -1, 1], "blocks": [0, 0, blocks, block], "rows": [0, 0, head["K"]],
              "last": [0, 0, -1, 1], "zeros_row": [0, 0, -1], "start": [0], "stop": [blocks], "axis": [-1]}
    nodes = []

    def op(kind, inputs, name, **attrs):
        out = f"{base}_{name}"
        nodes.append(helper.make_node(kind, inputs, [out], name=f"{node.name}_{name}", **attrs))
        return out

    def nibbles(packed, name):  # uint8 [..., P] -> int32 [..., 2 P], low nibble first
        wide = op("Cast", [packed], f"{name}_i32", to=TensorProto.INT32)
        low = op("Reshape", [op("Mod", [wide, f"{base}_sixteen"], f"{name}_low"), f"{base}_column"], f"{name}_lo")
        high = op("Reshape", [op("Div", [wide, f"{base}_sixteen"], f"{name}_high"), f"{base}_column"], f"{name}_hi")
        return op("Concat", [low, high], f"{name}_pairs", axis=-1)

    ids = node.input[1]
    codes = op("Gather", [head["B"], ids], "codes")  # [b, s, blocks, block * bits / 8]
    codes = op("Reshape", [nibbles(codes, "codes"), f"{base}_blocks"], "codes_blocks") if bits == 4 else codes
    values = op("Cast", [codes], "codes_f32", to=TensorProto.FLOAT)
    scale = op("Gather", [op("Reshape", [head["scales"], f"{base}_scales_shape"], "scales"), ids], "scale")
    if "zero_points" in head:
        zeros = op("Gather", [op("Reshape", [head["zero_points"], f"{base}_zeros_shape"], "zeros"), ids], "zero")
        zeros = op("Reshape", [nibbles(zeros, "zero"), f"{base}_zeros_row"], "zero_all") if bits == 4 else zeros
        zeros = op("Slice", [zeros, f"{base}_start", f"{base}_stop", f"{base}_axis"], "zero_blocks")
        zeros = op("Reshape", [op("Cast", [zeros], "zero_f32", to=TensorProto.FLOAT), f"{base}_last"], "zero_column")
    else:  # symmetric: MatMulNBits' implicit zero point
        zeros = f"{base}_zero_implicit"
        consts["zero_implicit"] = np.float32(2 ** (bits - 1))
    centred = op("Sub", [values, zeros], "centred")
    scaled = op("Mul", [centred, op("Reshape", [scale, f"{base}_last"], "scale_column")], "scaled")
    nodes.append(helper.make_node("Reshape", [scaled, f"{base}_rows"], [output], name=f"{node.name}_rows"))
    inits = [numpy_helper.from_array(np.array(v, np.float32 if k == "zero_implicit" else np.int64), f"{base}_{k}")
             for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array(16, np.int32), f"{base}_sixteen"))
    return nodes, inits
