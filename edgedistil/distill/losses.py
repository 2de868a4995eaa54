"""Distillation losses: soft labels on the next-token distribution (three divergences) plus CE, and hidden states.

Response KD: alpha * T^2 * D(teacher, student) at temperature T, plus (1 - alpha) * CE on the real next token,
where D is one of
- forward KL(p_t || p_s), Hinton et al.: mass-covering, the student spreads over everything the teacher allows;
- reverse KL(p_s || p_t), MiniLLM: mode-seeking, the student commits to the teacher's likely tokens;
- generalized JSD with weight beta, GKD: bounded, between the two; computed as TRL's GKDTrainer does, with the
  mixture m = beta * p_s + (1 - beta) * p_t and JSD = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def divergence(log_p_s: torch.Tensor, log_p_t: torch.Tensor, loss: str, beta: float = 0.5) -> torch.Tensor:
    """Mean over rows of D(teacher, student) for log-probabilities [N, V]."""
    if loss == "forward_kl":
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")  # KL(p_t || p_s)
    if loss == "reverse_kl":
        return F.kl_div(log_p_t, log_p_s, log_target=True, reduction="batchmean")  # KL(p_s || p_t)
    if loss == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p_s + math.log(beta), log_p_t + math.log(1 - beta)]), dim=0)
        kl_t = F.kl_div(log_m, log_p_t, log_target=True, reduction="batchmean")  # KL(p_t || m)
        kl_s = F.kl_div(log_m, log_p_s, log_target=True, reduction="batchmean")  # KL(p_s || m)
        return beta * kl_t + (1 - beta) * kl_s
    raise ValueError(f"unknown KD loss {loss!r}")  # the recipe validator only lets the three names through


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float, loss: str = "forward_kl",
            beta: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """The response-KD loss for a causal LM; logits [B, T, V], labels [B, T] (the next token at each position).

    The divergence is averaged per token; the T^2 factor keeps its gradient on the scale of the CE term when T
    changes. Returns the loss and its parts ("kl" is the chosen divergence, whatever its direction).
    """
    v = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, v)
    t = teacher_logits.float().reshape(-1, v)
    ce = F.cross_entropy(s, labels.reshape(-1))
    div = divergence(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1), loss, beta)
    total = alpha * temperature**2 * div + (1.0 - alpha) * ce
    return total, {"loss": total.item(), "kl": div.item(), "ce": ce.item()}


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain next-token cross-entropy: the CE-only baseline and sequence-level KD's loss."""
    ce = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), labels.reshape(-1))
    return ce, {"loss": ce.item(), "ce": ce.item()}


class FeatureKD(torch.nn.Module):
    """Hidden-state KD: student hidden state i is pulled towards teacher hidden state `teacher_index[i]`.

    A learned linear projection maps the student's width to the teacher's when they differ (FitNets); with equal
    widths the states are compared directly. MSE is divided by the teacher state's mean square, so its scale does
    not depend on how large the residual stream of a given model grows; cosine is 1 - cos per token.
    """

    def __init__(self, student_width: int, teacher_width: int, teacher_index: list[int], kind: str):
        super().__init__()
        self.teacher_index, self.kind = list(teacher_index), kind
        n = len(self.teacher_index)
        self.proj = (torch.nn.ModuleList(torch.nn.Linear(student_width, teacher_width, bias=False) for _ in range(n))
                     if student_width != teacher_width else None)

    def forward(self, student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor]) -> torch.Tensor:
        """student_hidden / teacher_hidden as EdgeLM.forward(output_hidden_states=True) returns them."""
        total = 0.0
        for i, ti in enumerate(self.teacher_index):
            s = student_hidden[i + 1].float()  # index 0 is the embeddings; layer i's output is i + 1
            if self.proj is not None:
                s = self.proj[i](s)
            t = teacher_hidden[ti].float()
            if self.kind == "mse":
                total = total + (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-6)
            else:
                total = total + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        return total / len(self.teacher_index)


def even_feature_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher hidden-state index for each student layer, evenly spaced and ending at the last (as TinyBERT maps
    student layer i to teacher layer i * teacher_layers / student_layers)."""
    return [round((i + 1) * teacher_layers / student_layers) for i in range(student_layers)]
