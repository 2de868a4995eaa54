"""Fidelity: an artifact on its runtime against its PyTorch source, on held-out text, measured never assumed.

Both sides run the same schedule (chunked prefill, then token-by-token decode) through their step functions:
- teacher forcing over held-out segments gives max abs logit diff, top-1 agreement and mean KL(source || artifact);
- greedy generation from a held-out prompt (shorter than one chunk, so padding is exercised) gives the number of
  generated tokens that match and where they first diverge.
"""

from __future__ import annotations

import numpy as np

from edgedistil.decoding import decode, greedy, prefill


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logits_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    lp_ref, lp_got = _log_softmax(ref), _log_softmax(got)
    return {
        "max_abs_diff": float(np.abs(ref.astype(np.float64) - got).max()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "kl_mean": float((np.exp(lp_ref) * (lp_ref - lp_got)).sum(-1).mean()),
    }


def measure_fidelity(reference, candidate, heldout_ids: np.ndarray, chunk: int, segments: int = 2,
                     decode_tokens: int = 16, greedy_tokens: int = 16) -> dict:
    """Compare `candidate` (any runtime with .step/.empty_cache/.max_len) against `reference` (the PyTorch source)."""
    max_len = min(reference.max_len, candidate.max_len)
    seg_len = chunk + decode_tokens
    if seg_len > max_len:
        decode_tokens = max_len - chunk
        seg_len = max_len
    ref_rows, got_rows = [], []
    stride = max(seg_len, (len(heldout_ids) - seg_len) // max(1, segments))
    for s in range(segments):
        seg = heldout_ids[s * stride: s * stride + seg_len].tolist()
        if len(seg) < seg_len:
            break
        for runtime, rows in ((reference, ref_rows), (candidate, got_rows)):
            logits_p, cache = prefill(runtime.step, runtime.empty_cache(), seg[:chunk], chunk, max_len)
            logits_d, _ = decode(runtime.step, cache, seg[chunk:], chunk)
            rows.append(np.concatenate([logits_p, logits_d]))
    result = logits_agreement(np.concatenate(ref_rows), np.concatenate(got_rows))
    result["positions_compared"] = int(sum(len(r) for r in ref_rows))

    prompt = heldout_ids[: max(1, chunk // 2)].tolist()
    n = min(greedy_tokens, max_len - len(prompt))
    ref_tokens = greedy(reference.step, reference.empty_cache(), prompt, n, chunk, max_len)
    got_tokens = greedy(candidate.step, candidate.empty_cache(), prompt, n, chunk, max_len)
    first = next((i for i, (a, b) in enumerate(zip(ref_tokens, got_tokens)) if a != b), n)
    result.update({
        "greedy_tokens_matching": int(sum(a == b for a, b in zip(ref_tokens, got_tokens))),
        "greedy_tokens": n,
        "greedy_first_divergence": first,
    })
    return result
