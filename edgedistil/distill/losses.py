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


def repeat_candidates(inputs: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, T] token ids (-1 = none): at position t, the distinct tokens that would repeat an n-gram of the
    context inputs[:t + 1] and are not the real next token labels[t]. n = 1 is Welleck et al.'s token-level set
    (every earlier token); n >= 2 is the token that followed an earlier occurrence of the (n - 1)-gram ending at
    t, the copy step a greedy loop is made of."""
    b, t = inputs.shape
    pos = torch.arange(t, device=inputs.device)
    ok = (pos[None, :] <= pos[:, None]).expand(b, t, t).clone()  # [B, t, i]: candidate i is inside t's context
    for k in range(n - 1):  # the k-th token before candidate i equals the k-th token back from t
        prev = inputs[:, (pos - 1 - k).clamp(min=0)]  # [B, i]
        back = inputs[:, (pos - k).clamp(min=0)]  # [B, t]
        ok &= (back[:, :, None] == prev[:, None, :]) & (pos > k)[None, None, :] & (pos >= k)[None, :, None]
    cand = torch.where(ok & (inputs[:, None, :] != labels[:, :, None]), inputs[:, None, :].expand(b, t, t), -1)
    cand, _ = cand.sort(dim=-1)
    repeat = torch.cat([torch.zeros_like(cand[..., :1], dtype=torch.bool), cand[..., 1:] == cand[..., :-1]], -1)
    return cand.masked_fill(repeat, -1)


def token_unlikelihood(student_logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                       n: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Token-level unlikelihood (Welleck et al. 2020) on the training windows: sum over repeat_candidates of
    -log(1 - p_student), averaged over positions; also the mean number of candidates a position has. With `rows`
    ([vocab] -> row, negative outside), the logits are a trimmed head's rows, and a candidate outside them drops."""
    cand = repeat_candidates(inputs, labels, n)
    if rows is not None:
        cand = torch.where(cand >= 0, rows[cand.clamp(min=0)], -1).clamp(min=-1)
    used = cand >= 0
    log_p = F.log_softmax(student_logits.float(), dim=-1).gather(-1, cand.clamp(min=0))
    penalty = -torch.log((1.0 - log_p.exp()).clamp(min=1e-5))
    return (penalty * used).sum(-1).mean(), float(used.sum(-1).float().mean())


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
