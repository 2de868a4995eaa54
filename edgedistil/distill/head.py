"""A trimmed output head: the student keeps the K vocabulary rows it uses (`[student] head_rows`).

A decode step of the default student spends 43% of its multiply-adds in the 49,152-row head it shares with the
teacher (docs/benchmarks.md, "The output head"). An English chat student puts almost all of its probability on a
few thousand tokens, so the head keeps the K rows with the most of the teacher's probability over the training text
(its softmax summed over every position), plus the byte alphabet (one-character tokens) and the special tokens, so
any text can still be spelled and every turn can end. The rows are chosen before training (from the teacher's
top-k logits cache, at no cost); the student trains over the whole vocabulary, or over the kept rows alone with
`[distill] train_head = "kept"` (1.22x the training tokens/s on 2 CPU cores; one run, within the seeds' spread of the
default: docs/benchmarks.md, "The output head"). Exports compute those K rows and read each
id's logit from them; the ids outside them get HEAD_FLOOR (probability 0), so every runtime still sees a
full-vocabulary row (edgedistil.model.EdgeLM.trim_head). The student folder keeps the whole head for transformers,
with head_rows.json and generation_config.json's suppress_tokens saying which ids it never produces.

What the cut costs is measured on held-out text before anything ships: how often the whole head's top-1 falls inside
the kept rows (then the trimmed head picks the same token), and how much of its probability does.
"""

from __future__ import annotations

import torch

from edgedistil.errors import EdgeError


def always_kept(tokenizer) -> list[int]:
    """The byte-level alphabet (one-character tokens) and the special tokens: kept whatever the ranking says."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    return sorted(i for s, i in vocab.items() if len(s) == 1 or s in special)


@torch.no_grad()
def probability_mass(model, windows: torch.Tensor, device: str = "cpu", batch: int = 8) -> torch.Tensor:
    """The model's softmax summed over every position of `windows` [N, T]: [vocab] float64."""
    mass = torch.zeros(model.cfg.vocab_size, dtype=torch.float64)
    for i in range(0, len(windows), batch):
        logits = model(windows[i:i + batch].to(device)).float()
        mass += logits.softmax(-1).sum((0, 1)).double().cpu()
    return mass


def teacher_topk_mass(ids: torch.Tensor, logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """The teacher's softmax over its cached top-k logits (ids and logits [..., k]), summed over every position:
    [vocab] float64. The mass outside the top k is dropped, as the top-k loss drops it."""
    mass = torch.zeros(vocab, dtype=torch.float64)
    return mass.index_add_(0, ids.reshape(-1).long(), logits.float().softmax(-1).reshape(-1).double())


def row_index(kept: list[int], vocab: int, outside: int) -> torch.Tensor:
    """[vocab] long: each kept id's row in a head of the `kept` rows, `outside` for every other id."""
    index = torch.full((vocab,), outside, dtype=torch.long)
    index[torch.as_tensor(kept, dtype=torch.long)] = torch.arange(len(kept))
    return index


def check_rows(rows: int, base: int, vocab: int) -> None:
    """Refuse a head_rows the vocabulary cannot honour, before training starts."""
    if rows and not base < rows < vocab:
        example = " (e.g. 16384)" if base < 16384 < vocab else ""
        raise EdgeError(f"[student] head_rows = {rows} must be above the {base} ids always kept (bytes and special "
                        f"tokens) and below the vocabulary's {vocab}",
                        f"set head_rows between {base + 1} and {vocab - 1}{example}, or 0 for the whole head "
                        f"(--set student.head_rows=0)")


def rank_rows(mass: torch.Tensor, base: list[int], rows: int) -> list[int]:
    """The `rows` ids to keep: `base`, then the others by probability mass (ties by id), sorted by id."""
    fixed = set(base)
    order = [i for i in torch.argsort(-mass, stable=True).tolist() if i not in fixed]
    return sorted([*fixed, *order[:rows - len(fixed)]])


@torch.no_grad()
def cut_figures(model, windows: torch.Tensor, kept: list[int], device: str = "cpu", batch: int = 8) -> dict:
    """What the cut costs on `windows`, read from the whole head: the share of positions whose top-1 is kept (the
    trimmed head's top-1 agreement with the whole one), of the probability kept, and of next tokens kept."""
    inside = torch.zeros(model.cfg.vocab_size, dtype=torch.bool)
    inside[torch.as_tensor(kept)] = True
    top1 = mass = label = n = 0.0
    for i in range(0, len(windows), batch):
        x = windows[i:i + batch]
        probs = model(x[:, :-1].to(device)).float().softmax(-1).cpu()
        top1 += float(inside[probs.argmax(-1)].sum())
        mass += float(probs[..., inside].sum())
        label += float(inside[x[:, 1:]].sum())
        n += x[:, 1:].numel()
    n = max(n, 1)
    return {"tokens": int(n), "top1_agreement_with_whole_head": round(top1 / n, 5),
            "probability_kept": round(mass / n, 5), "next_tokens_kept": round(label / n, 5)}
