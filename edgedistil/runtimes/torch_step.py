"""The PyTorch reference: EdgeLM.step as a step function, in fp32 on the CPU, and whole windows at once."""

from __future__ import annotations

import numpy as np
import torch

from edgedistil.model import EdgeLM


class TorchLM:
    def __init__(self, model: EdgeLM, max_len: int):
        self.model = model.eval()
        self.max_len = max_len

    def empty_cache(self):
        return self.model.empty_cache(self.max_len)

    @torch.no_grad()
    def step(self, ids: list[int], position: int, cache):
        k, v = cache
        logits, k, v = self.model.step(torch.tensor([ids], dtype=torch.int32),
                                       torch.tensor([position], dtype=torch.int32), k, v)
        return logits[0].float().numpy(), (k, v)

    @torch.no_grad()
    def window_logits(self, windows: np.ndarray, batch: int = 4) -> np.ndarray:
        """Logits [N, T, V] of `windows` [N, T], each scored from position 0 with full causal attention: the
        model's own definition of its logits, and faster than stepping through a cache."""
        ids = torch.as_tensor(np.asarray(windows), dtype=torch.long)
        return np.concatenate([self.model(ids[i:i + batch]).float().numpy() for i in range(0, len(ids), batch)])
