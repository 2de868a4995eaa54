"""The PyTorch reference: EdgeLM.step as a step function, in fp32 on the CPU."""

from __future__ import annotations

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
