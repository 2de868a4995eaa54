"""The teacher's top-k logits, computed once and reused: train several students, or one student with several
settings, without running the teacher again (`[distill] teacher_topk = k`).

The cache holds the training blocks a run draws (steps x batch_size windows, drawn with the run's seeded generator
exactly as live training draws them) and, for every position, the teacher's k largest logits and their token ids:
int32 blocks, int32 ids and fp16 logits in one safetensors file, with a JSON identity. Each distinct window is
stored and run through the teacher once, and `order` lists the draws as indices into them: windows that start at
a conversation's start (`[data] windows = "documents"`) repeat, so 200 steps of 4 draws hold a few hundred
distinct windows, and a 16x budget needs no more teacher passes than 1x. Its identity is what the
blocks and logits depend on (teacher, corpus, data settings, seed, batch size, steps, k), not the student or the
loss settings, so a second student or another alpha or T reuses it. Steps beyond one pass over the cache go round
again in a fresh order (epochs).

The loss over top-k is forward KL restricted to the teacher's k tokens: the teacher's softmax over its top-k
logits at T (renormalized) against the student's full-vocabulary log-probabilities at those ids, the usual sparse
KD approximation (the teacher mass outside the top k is dropped).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgedistil.distill.data import sample_blocks
from edgedistil.errors import EdgeError, atomic_dir, read_json, write_json

FILE = "teacher_topk.safetensors"
SPLIT = "documents whole"  # how the held-out split is made (sources.split_corpus); older caches split lines


def cache_identity(teacher_fingerprint: str, corpus_text: str, recipe) -> dict:
    d, data = recipe.distill, recipe.data
    return {"teacher": teacher_fingerprint, "corpus_sha256": hashlib.sha256(corpus_text.encode()).hexdigest(),
            "seq_len": data.seq_len, "windows": data.windows, "split": SPLIT,
            "heldout_fraction": data.heldout_fraction, "seed": d.seed, "batch_size": d.batch_size, "steps": d.steps,
            "k": d.teacher_topk}


def shared_folder(identity: dict) -> Path:
    """The cache's folder in the edgedistil cache: one per identity, so every run with the same teacher, data and
    sampling order reads the same logits, whatever student it trains."""
    from edgedistil.sources.cache import cache_dir

    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "teacher-logits" / key


@torch.no_grad()
def build_cache(teacher, train_ids: np.ndarray, starts: np.ndarray | None, identity: dict, folder: Path,
                device: str, log=print, chunk: int = 8) -> None:
    """Draw the run's blocks and store the teacher's top-k logits for each position of each distinct one, atomically
    in `folder`."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(identity["seed"])
    draws = torch.cat([sample_blocks(train_ids, identity["batch_size"], identity["seq_len"] + 1, gen, starts)
                       for _ in range(identity["steps"])])
    blocks, order = torch.unique(draws, dim=0, return_inverse=True)
    k = identity["k"]
    ids, logits = [], []
    teacher = teacher.to(device).eval()
    for i in range(0, len(blocks), chunk):
        out = teacher(blocks[i:i + chunk, :-1].to(device)).float()
        top = out.topk(k, dim=-1)
        ids.append(top.indices.to(torch.int32).cpu())
        logits.append(top.values.to(torch.float16).cpu())
    with atomic_dir(folder) as tmp:
        save_file({"blocks": blocks.to(torch.int32).contiguous(), "order": order.to(torch.int32).contiguous(),
                   "ids": torch.cat(ids).contiguous(), "logits": torch.cat(logits).contiguous()}, str(tmp / FILE))
        write_json(tmp / "identity.json", identity)
    size = (folder / FILE).stat().st_size
    log(f"distill: teacher top-{k} logits of {len(draws)} blocks ({len(blocks)} distinct) cached in {folder} "
        f"({size / 1e6:.1f} MB)")


def load_cache(folder: Path, identity: dict) -> dict[str, torch.Tensor] | None:
    """The cache in `folder` if it was made for `identity`; None if there is none; an error if it is another's."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "identity.json").is_file():
        return None
    saved = read_json(folder / "identity.json", "teacher cache identity")
    if saved != identity:
        differ = sorted(key for key in identity if saved.get(key) != identity[key])
        raise EdgeError(f"the teacher cache in {folder} was made for another run (differs in: {', '.join(differ)})",
                        "delete that folder, or set [distill] teacher_cache to another path")
    try:
        return load_file(str(folder / FILE))
    except Exception as e:  # a truncated or corrupt file: safetensors raises its own error types
        raise EdgeError(f"the teacher cache {folder / FILE} is unreadable ({str(e)[:120]})",
                        "delete the folder; the next run rebuilds it") from None


def cached_batch(cache: dict[str, torch.Tensor], step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Step `step`'s rows: the cache's own order for the first pass (the live run's batches), then a fresh order
    per pass. Depends on the step only, so a resumed run draws the same rows."""
    draws = draw_order(cache)
    n = len(draws)
    orders: dict[int, torch.Tensor] = {}

    def order(epoch: int) -> torch.Tensor:
        if epoch not in orders:
            orders[epoch] = torch.arange(n) if epoch == 0 else torch.randperm(
                n, generator=torch.Generator().manual_seed(seed + epoch))
        return orders[epoch]

    rows = draws[torch.stack([order(i // n)[i % n] for i in range(step * batch_size, (step + 1) * batch_size)])]
    return cache["blocks"][rows].long(), cache["ids"][rows].long(), cache["logits"][rows].float()


def draw_order(cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """The run's draws as indices into the cache's distinct blocks (a cache from before `order` holds every draw)."""
    return cache["order"].long() if "order" in cache else torch.arange(len(cache["blocks"]))


def drawn_blocks(cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """The blocks in the order the run draws them, [steps x batch_size, seq_len + 1]."""
    return cache["blocks"][draw_order(cache)]


def topk_kd_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor,
                 labels: torch.Tensor, alpha: float, temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * T^2 * KL(teacher top-k || student) + (1 - alpha) * CE; logits [B, T, V], top-k [B, T, k].

    An id or label of IGNORE is left out: a teacher id the student cannot produce (training over a trimmed head's
    rows) drops out of the teacher's renormalized top-k, and a label of IGNORE out of CE. The KD term is averaged
    over the positions with a teacher id left, CE over those with a label."""
    v, k = student_logits.shape[-1], topk_ids.shape[-1]
    total, div, ce = _TopkKD.apply(student_logits.reshape(-1, v), topk_ids.reshape(-1, k),
                                   topk_logits.reshape(-1, k).float(), labels.reshape(-1), alpha, temperature)
    return total, {"loss": total.item(), "kl": div.item(), "ce": ce.item()}


IGNORE = -100  # an id outside the rows trained over (F.cross_entropy's ignore_index)


class _TopkKD(torch.autograd.Function):
    """The top-k KD loss with its gradient written out: d/ds = alpha*T*(softmax(s/T) - p_t on its ids)
    + (1 - alpha)*(softmax(s) - one-hot label), each term averaged over its rows. Autograd's version makes a float
    copy of the [N, V] logits, runs log-softmax twice and zero-fills two [N, V] tensors for its gathers' gradients:
    a fifth of a CPU training step on a 49k vocabulary. This one runs one log-softmax forward and turns its output
    into the gradient in place."""

    @staticmethod
    def forward(ctx, logits, ids, t_logits, labels, alpha: float, temperature: float):
        ids, labels = ids.long(), labels.long()
        kept, labelled = ids != IGNORE, labels != IGNORE
        has_teacher = kept.any(-1)
        ids, labels = ids.clamp(min=0), labels.clamp(min=0)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        log_p = F.log_softmax(logits, dim=-1, dtype=dtype)  # read once, in the logits' own dtype
        log_p_s = log_p if temperature == 1 else F.log_softmax(logits.to(dtype) / temperature, dim=-1)
        t = (t_logits / temperature).masked_fill(~kept, float("-inf")).masked_fill(~has_teacher[:, None], 0.0)
        log_p_t = F.log_softmax(t, dim=-1)
        p_t = log_p_t.exp() * has_teacher[:, None]
        # the KD term's and CE's weight per row: each term is a mean over the rows it has
        w_kd = has_teacher / has_teacher.sum().clamp(min=1)
        w_ce = labelled / labelled.sum().clamp(min=1)
        div = (torch.where(p_t > 0, p_t * (log_p_t - log_p_s.gather(-1, ids)), 0.0).sum(-1) * w_kd).sum()
        ce = -(log_p.gather(-1, labels[:, None])[:, 0] * w_ce).sum()
        ctx.save_for_backward(log_p, log_p_s, ids, p_t, labels, w_kd, w_ce)
        ctx.alpha, ctx.temperature, ctx.dtype = alpha, temperature, logits.dtype
        ctx.mark_non_differentiable(div, ce)  # reported parts; the gradient is the total's
        return alpha * temperature**2 * div + (1.0 - alpha) * ce, div, ce

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_div, _grad_ce):
        log_p, log_p_s, ids, p_t, labels, w_kd, w_ce = ctx.saved_tensors
        a, t = ctx.alpha, ctx.temperature
        kd, ce = (w_kd * (a * t))[:, None].to(log_p.dtype), (w_ce * (1.0 - a))[:, None].to(log_p.dtype)
        if t == 1:
            grad = log_p.exp_().mul_(kd + ce)  # softmax(s): the saved log-probabilities are not needed again
        else:
            grad = log_p_s.exp_().mul_(kd).add_(log_p.exp_().mul_(ce))
        grad.scatter_add_(-1, ids, -(p_t.to(grad.dtype) * kd))
        grad.scatter_add_(-1, labels[:, None], -ce)
        return grad.mul_(grad_total).to(ctx.dtype), None, None, None, None, None


def describe(cache: dict[str, torch.Tensor], folder: Path) -> dict:
    return {"folder": str(folder), "blocks": int(len(draw_order(cache))), "distinct_blocks": int(len(cache["blocks"])),
            "k": int(cache["ids"].shape[-1]),
            "bytes": (Path(folder) / FILE).stat().st_size,
            "identity": json.loads((Path(folder) / "identity.json").read_text())}
