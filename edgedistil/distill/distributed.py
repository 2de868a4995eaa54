"""torchrun support: the same `edgedistil distill` runs as one process or as several ranks, DDP or FSDP.

Under torchrun (WORLD_SIZE > 1) every rank samples the same global batch with the same seeded generator and
trains on its own contiguous slice of rows; the gradients are averaged over ranks, so a step equals the
single-process step on the whole batch up to floating-point summation order. Backend: NCCL on CUDA, gloo on CPU.
Only rank 0 writes.

- DDP: each rank holds the whole student and teacher.
- FSDP (`[distill] parallel = "fsdp"`, PyTorch's fully_shard): each decoder layer of the student and of the
  teacher is sharded over the ranks and gathered only while it runs, so a teacher too big for one device fits
  across several. At the end the student's full weights are gathered for rank 0 to evaluate and save.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from edgedistil.errors import EdgeError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str) -> Dist:
    """Join the process group torchrun set up in the environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    d = Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        torch.cuda.set_device(d.local_rank)
    return d


def local_rows(batch: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's contiguous share of the global batch."""
    if batch.shape[0] % d.world:
        raise EdgeError(f"[distill] batch_size {batch.shape[0]} does not split over {d.world} processes",
                        f"use a batch_size divisible by {d.world} x grad_accum")
    n = batch.shape[0] // d.world
    return batch[d.rank * n:(d.rank + 1) * n]


def shard(model: torch.nn.Module, layers) -> torch.nn.Module:
    """FSDP: shard each decoder layer, then the rest (embeddings, norm, head, projections) as the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_state_dict(model: torch.nn.Module) -> dict:
    """The unsharded weights of an FSDP module, on the CPU; every rank must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def mean_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """The metrics of the whole global batch, for logging."""
    if not d.active:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world).cpu().tolist()))


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
