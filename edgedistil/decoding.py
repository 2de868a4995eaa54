"""Chunked prefill and greedy decoding over any runtime's step function, so every runtime decodes the same way.

A step function takes `(ids: list[int] of length T, position: int, cache)` and returns `(logits [T, V] numpy,
cache)`. Prefill runs the prompt in fixed chunks of P tokens; the last chunk is padded, and its padded rows are
ignored (they write cache slots past the prompt, which the next real token overwrites before anyone reads them).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgedistil.errors import EdgeError

StepFn = Callable[[list[int], int, Any], tuple[np.ndarray, Any]]
# The logit of an id a trimmed head leaves out (EdgeLM.trim_head): probability exactly 0 after softmax in fp32 and
# fp16, yet finite, so log-probabilities and KL against it stay finite in every runtime. Here, beside the other
# torch-free helpers, since the fidelity checks read it on the arm64 root, which has no torch.
HEAD_FLOOR = -1e4


def logit_range(row: np.ndarray) -> float:
    """max - min of one step's logits over the ids the model can produce (a trimmed head's floor left out)."""
    live = row[row > HEAD_FLOOR / 2]
    return float(live.max() - live.min()) if live.size else 0.0


def prefill(step: StepFn, cache: Any, prompt: list[int], chunk: int, max_len: int, pad_id: int = 0,
            start: int = 0) -> tuple[np.ndarray, Any]:
    """Run `prompt` from position `start` in chunks of `chunk`; returns logits for every prompt token and the cache."""
    if not prompt:
        raise EdgeError("the prompt is empty", "give at least one token")
    padded_end = start + -(-len(prompt) // chunk) * chunk
    if padded_end > max_len:
        raise EdgeError(f"a {len(prompt)}-token prompt padded to {padded_end} positions does not fit the "
                        f"{max_len}-position cache", "use a shorter prompt or export with a larger max_len")
    rows = []
    for i in range(0, len(prompt), chunk):
        piece = prompt[i:i + chunk]
        logits, cache = step(piece + [pad_id] * (chunk - len(piece)), start + i, cache)
        rows.append(logits[: len(piece)])
    return np.concatenate(rows), cache


def decode(step: StepFn, cache: Any, tokens: list[int], start: int) -> tuple[np.ndarray, Any]:
    """Feed `tokens` one at a time from position `start` (teacher forcing); returns their logits and the cache."""
    rows = []
    for i, tok in enumerate(tokens):
        logits, cache = step([tok], start + i, cache)
        rows.append(logits[-1])
    return np.stack(rows), cache


def penalized_argmax(row: np.ndarray, answer: list[int], penalty: float) -> int:
    """Argmax after CTRL's repetition penalty on the tokens of `answer` (a positive logit divided by `penalty`, a
    negative one multiplied). Only the answer's own tokens: the prompt holds the chat template's end-of-turn token,
    and a penalty over the whole context pushes that down until answers stop ending (docs/quality.md, "Decoding")."""
    if penalty == 1.0 or not answer:
        return int(row.argmax())
    row = row.astype(np.float32, copy=True)
    seen, p = np.unique(answer), np.float32(penalty)
    row[seen] = np.where(row[seen] > 0, row[seen] / p, row[seen] * p)
    return int(row.argmax())


def greedy(step: StepFn, cache: Any, prompt: list[int], new_tokens: int, chunk: int, max_len: int,
           repetition_penalty: float = 1.0) -> list[int]:
    """Greedy generation: chunked prefill of `prompt`, then `new_tokens` decode steps. Returns the new tokens.
    `repetition_penalty` > 1 penalizes the tokens already generated (penalized_argmax); 1 is plain greedy."""
    if len(prompt) + new_tokens > max_len:
        raise EdgeError(f"{len(prompt)} prompt + {new_tokens} new tokens exceed the {max_len}-position cache",
                        "generate fewer tokens or export with a larger max_len")
    if not repetition_penalty > 0:
        raise EdgeError(f"repetition penalty {repetition_penalty} is not > 0", "use 1 for plain greedy decoding")
    logits, cache = prefill(step, cache, prompt, chunk, max_len)
    out = [penalized_argmax(logits[-1], [], repetition_penalty)]
    pos = len(prompt)
    while len(out) < new_tokens:
        logits, cache = step([out[-1]], pos, cache)
        out.append(penalized_argmax(logits[-1], out, repetition_penalty))
        pos += 1
    return out
