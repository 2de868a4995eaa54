"""Batched log-likelihood scoring of multiple-choice items, as lm-evaluation-harness scores them.

Each choice is a request (context, " " + choice). Tokens follow lm-eval's `_encode_pair`: trailing spaces of the
context move to the continuation, the pair is encoded whole and the continuation's tokens are what follows the
context's own encoding, without special tokens. A choice's score is the sum of its tokens' log-probabilities;
`acc` picks the highest sum, `acc_norm` the highest sum per character of the choice (lm-eval's acc_norm, and
lighteval's "acc_norm_nospace": the delimiter space is not counted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from edgedistil.errors import EdgeError
from edgedistil.model import EdgeLM

DELIMITER = " "
# Sequences per forward are capped by padded tokens, so short PIQA pairs batch wide and long HellaSwag ones narrow.
BATCH_TOKENS = 4096


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    ctx = tok.encode(context, add_special_tokens=False).ids
    return ctx, whole[len(ctx):]


def requests(tok: Tokenizer, item: dict) -> list[tuple[list[int], list[int]]]:
    ctx = item["context"]
    contexts = ctx if isinstance(ctx, list) else [ctx] * len(item["choices"])
    return [encode_pair(tok, c, DELIMITER + ch) for c, ch in zip(contexts, item["choices"])]


@torch.no_grad()
def loglikelihoods(model: EdgeLM, reqs: list[tuple[list[int], list[int]]], batch_tokens: int = BATCH_TOKENS,
                   progress=None) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) request.

    Requests run longest first in right-padded batches: causal attention never lets a real position see the
    padding after it, so padding changes nothing, and only continuation positions go through the LM head.
    """
    max_len = model.rope_cos.shape[0]
    seqs = []
    for ctx, cont in reqs:
        if not ctx or not cont:
            raise EdgeError("a benchmark item has an empty context or choice", "give every item text in both")
        # lm-eval keeps the right end of a pair longer than the model's window
        seqs.append(((ctx + cont)[-(max_len + 1):-1], cont))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out = [0.0] * len(seqs)
    i = 0
    while i < len(order):
        width = len(seqs[order[i]][0])
        batch = order[i:i + max(1, batch_tokens // max(1, width))]
        x = torch.zeros(len(batch), width, dtype=torch.long)
        rows, cols, targets, owner = [], [], [], []
        for r, j in enumerate(batch):
            inp, cont = seqs[j]
            x[r, :len(inp)] = torch.tensor(inp)
            first = len(inp) - len(cont)  # the position that predicts the continuation's first token
            rows += [r] * len(cont)
            cols += range(first, len(inp))
            targets += cont
            owner += [r] * len(cont)
        h = model.hidden_states(x)[-1][torch.tensor(rows), torch.tensor(cols)]
        lp = F.log_softmax(model.logits(h).float(), -1).gather(-1, torch.tensor(targets)[:, None])[:, 0]
        sums = torch.zeros(len(batch)).index_add_(0, torch.tensor(owner), lp)
        for r, j in enumerate(batch):
            out[j] = float(sums[r])
        i += len(batch)
        if progress:
            progress(len(batch))
    return out


def pick(lls: list[float], choices: list[str]) -> tuple[int, int]:
    """(acc choice, acc_norm choice): highest log-likelihood, and highest per character of the choice."""
    best = max(range(len(lls)), key=lambda k: lls[k])
    best_norm = max(range(len(lls)), key=lambda k: lls[k] / max(1, len(choices[k])))
    return best, best_norm


def score_items(model: EdgeLM, tok: Tokenizer, items: list[dict], batch_tokens: int = BATCH_TOKENS) -> dict:
    """acc and acc_norm in points over `items`, with each item's log-likelihoods (kept for caching and checks)."""
    reqs, spans = [], []
    for it in items:
        r = requests(tok, it)
        spans.append((len(reqs), len(reqs) + len(r)))
        reqs += r
    lls = loglikelihoods(model, reqs, batch_tokens)
    acc = acc_norm = 0
    per_item = []
    for it, (a, b) in zip(items, spans):
        best, best_norm = pick(lls[a:b], it["choices"])
        acc += best == it["gold"]
        acc_norm += best_norm == it["gold"]
        per_item.append([round(v, 4) for v in lls[a:b]])
    n = len(items)
    return {"n": n, "acc": 100 * acc / n, "acc_norm": 100 * acc_norm / n, "loglikelihoods": per_item}
