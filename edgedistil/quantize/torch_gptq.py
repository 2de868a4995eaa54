"""GPTQ on a PyTorch model's Linear weights, for converters that quantize the file afterwards.

LiteRT's quantizer rounds each weight to its nearest grid point. GPTQ (quantize/blockwise.gptq) rounds one input
column at a time and moves each rounding error onto the columns not yet rounded, so what it minimises is the
layer's output error on calibration text. Here the rounded weights are written back into the model as floats that
lie exactly on a symmetric int8 grid, one scale per output row; ai-edge-quantizer's dequantized-weight recovery
then stores those very codes and scales as int8 (convert/android.py). Calibration reads the held-out text between
the segments that fidelity scores, never the segments themselves.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from edgedistil.errors import EdgeError
from edgedistil.quantize.blockwise import calibration_windows, gptq


def linear_hessians(model: torch.nn.Module, names: list[str], windows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """H = 2/n X^T X of each named Linear's input X, over full causal forwards of `windows` (fp64 sums)."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}

    def hook(name):
        def accumulate(_module, args, _output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
        return accumulate

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for window in windows:
                model(torch.as_tensor(np.asarray(window), dtype=torch.long)[None])
    finally:
        for h in handles:
            h.remove()
    tokens = sum(len(w) for w in windows)
    return {n: (2.0 * s / tokens).numpy() for n, s in sums.items()}


def gptq_int8_rows(model: torch.nn.Module, heldout_ids: np.ndarray, chunk: int, max_len: int,
                   skip: tuple[str, ...], segments: int = 16, min_tokens: int = 256, act_order: bool = True,
                   nearest: bool = False) -> tuple[torch.nn.Module, dict]:
    """A copy of `model` whose Linear weights (but those whose name contains a part in `skip`) are GPTQ-rounded to
    symmetric int8 with one scale per output row, stored back as the dequantized floats; and what was done.
    Calibration reads `heldout_ids` between the `segments` that fidelity scores. `act_order` False keeps the
    columns in their order; `nearest` rounds each weight to its nearest grid point (what the quantizer does)."""
    windows = calibration_windows(heldout_ids, chunk, max_len, segments)
    tokens = sum(len(w) for w in windows)
    if tokens < min_tokens:
        raise EdgeError(f"{len(heldout_ids)} held-out tokens leave {tokens} for GPTQ calibration (needs "
                        f"{min_tokens})", "use a larger corpus or heldout_fraction")
    rounded = copy.deepcopy(model).eval()
    names = [n for n, m in rounded.named_modules() if isinstance(m, torch.nn.Linear)
             and not any(part in n for part in skip)]
    hessians = linear_hessians(rounded, names, windows)  # from the fp32 model: every layer sees fp32 inputs
    modules = dict(rounded.named_modules())
    for name in names:
        weight = modules[name].weight
        w, h = weight.detach().double().numpy(), hessians[name]
        # act order (GPTQ's desc_act): the inputs with the largest activations first, while most columns are left
        # to absorb their error; with one scale per row the order changes no scale. On the embedded default's
        # android int8 it took top-1 from 0.975 to 0.982 (docs/android.md).
        order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(w.shape[1])
        codes, scales, zeros = gptq(w[:, order], None if nearest else h[np.ix_(order, order)], 8, w.shape[1],
                                    symmetric=True, narrow=True)
        codes = codes[:, np.argsort(order)]
        with torch.no_grad():
            weight.copy_(torch.from_numpy((codes - zeros) * scales).to(weight.dtype))
    return rounded, {"rounding": "nearest" if nearest else "gptq",
                     "order": "act order (largest input activations first)" if act_order else "as stored",
                     "calibration_tokens": tokens, "layers": len(names),
                     "grid": "symmetric int8 (narrow: -127..127), one scale per output row", "kept": list(skip)}
