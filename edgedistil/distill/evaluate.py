"""Held-out quality of a student beside its teacher: perplexity, top-1 agreement and KL(teacher || student)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def eval_windows(ids: np.ndarray, block: int, max_tokens: int) -> torch.Tensor:
    """Non-overlapping windows of `block`+1 tokens from the start of the held-out ids, about `max_tokens` in all."""
    n = max(1, min(len(ids) // (block + 1), max_tokens // block))
    return torch.from_numpy(ids[: n * (block + 1)].astype(np.int64)).view(n, block + 1)


@torch.no_grad()
def compare_on_heldout(student, teacher, windows: torch.Tensor, batch_size: int = 8,
                       device: str = "cpu") -> dict[str, float]:
    """Teacher-forced next-token metrics at T=1 over `windows` [N, block+1]."""
    nll_s = nll_t = kl = agree = count = 0.0
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size].to(device)
        inputs, labels = x[:, :-1], x[:, 1:].reshape(-1)
        ls = student(inputs).float().reshape(-1, student.cfg.vocab_size)
        lt = teacher(inputs).float().reshape(-1, teacher.cfg.vocab_size)
        nll_s += float(F.cross_entropy(ls, labels, reduction="sum"))
        nll_t += float(F.cross_entropy(lt, labels, reduction="sum"))
        log_ps, log_pt = F.log_softmax(ls, -1), F.log_softmax(lt, -1)
        kl += float((log_pt.exp() * (log_pt - log_ps)).sum())
        agree += float((ls.argmax(-1) == lt.argmax(-1)).sum())
        count += labels.numel()
    ppl_s, ppl_t = math.exp(nll_s / count), math.exp(nll_t / count)
    return {
        "tokens": int(count),
        "student_perplexity": ppl_s,
        "teacher_perplexity": ppl_t,
        "top1_agreement_with_teacher": agree / count,
        "kl_teacher_student_mean": kl / count,
        # share of the teacher's quality kept, on the log scale that perplexity hides: 1.0 = as good as the teacher
        "quality_retained": math.log(ppl_t) / math.log(ppl_s) if ppl_s > 1 else 1.0,
    }


@torch.no_grad()
def student_only_quality(student, windows: torch.Tensor, reason: str, batch_size: int = 8,
                         device: str = "cpu") -> dict:
    """Held-out perplexity of a student whose tokenizer is not the teacher's: per-token teacher figures would
    count other tokens, so they are null with `reason`."""
    nll = count = 0.0
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size].to(device)
        logits = student(x[:, :-1]).float().reshape(-1, student.cfg.vocab_size)
        nll += float(F.cross_entropy(logits, x[:, 1:].reshape(-1), reduction="sum"))
        count += x[:, 1:].numel()
    return {"tokens": int(count), "student_perplexity": math.exp(nll / count), "teacher_perplexity": None,
            "top1_agreement_with_teacher": None, "kl_teacher_student_mean": None, "quality_retained": None,
            "null_reason": reason}
