"""The distillation loss: alpha * T^2 * KL(teacher || student) at temperature T, plus (1 - alpha) * CE on labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinton et al.'s soft-label loss for a causal LM.

    Logits are [B, T, V] and labels [B, T] (the next token at each position). The KL is averaged per token; the T^2
    factor keeps its gradient on the same scale as the CE term when T changes. Returns the loss and its parts.
    """
    v = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, v)
    t = teacher_logits.float().reshape(-1, v)
    ce = F.cross_entropy(s, labels.reshape(-1))
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")  # KL(p_t || p_s), mean over tokens
    loss = alpha * temperature**2 * kl + (1.0 - alpha) * ce
    return loss, {"loss": loss.item(), "kl": kl.item(), "ce": ce.item()}
