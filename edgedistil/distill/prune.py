"""Which teacher layers, FFN neurons and attention heads a student keeps, chosen by measurement.

A student made of evenly spaced teacher layers starts from perplexity in the millions on SmolLM2 (a deep, thin
model); one made of the layers whose removal costs least starts 600-3,000x lower (shared/notes/quality.md).
Three layer rankings, all on calibration text taken from the training split:

- "greedy": remove, one at a time, the layer whose removal raises the calibration loss least (measured each
  round against the layers still kept, so the picks for every size are nested);
- "block_influence": ShortGPT's 1 - cos(layer input, layer output), lowest first, from one forward pass;
- "angular": Gromov et al.'s angular distance between the hidden states n layers apart, removing the contiguous
  block of n layers whose ends are closest.

Width follows Minitron: FFN neurons ranked by their mean |activation| (silu(gate) * up), attention heads in whole
KV groups by the mean norm of their output, both over the same calibration text through the kept layers.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LAYER_RANKINGS = ("greedy", "block_influence", "angular")
# `[student] init = "auto"`. On the embedded default (14 layers x FFN 1024, 200 steps, the bf16-written conversations;
# docs/results/students_bf16chat_inits_14l.json) block influence's pick did best after distillation (CE ratio 0.862,
# top-1 0.580; greedy removal 0.829 and 0.544; angular distance 0.819 and 0.536), and it is one forward pass where
# greedy removal takes minutes. Its q8 bundle decodes as fast as the greedy one's in Chromium (1.02x and 0.99x over
# four alternating rounds, docs/results/bench_web_tiering.json); an earlier 0.80-0.85x was pages that had not yet
# left V8's baseline tier.
AUTO_RANKING = "block_influence"


def _run(teacher, picks: list[int], h: torch.Tensor, cos, sin) -> torch.Tensor:
    for i in picks:
        h = teacher.model.layers[i](h, cos, sin)
    return h


def _loss(teacher, h: torch.Tensor, labels: torch.Tensor) -> float:
    logits = teacher.logits(teacher.model.norm(h)).float()
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)))


@torch.no_grad()
def keep_loss(teacher, windows: torch.Tensor, picks: list[int]) -> float:
    """Calibration cross-entropy (nats per token) of the teacher run through `picks` only."""
    x, labels = windows[:, :-1], windows[:, 1:]
    t = x.shape[1]
    return _loss(teacher, _run(teacher, picks, teacher.model.embed_tokens(x), teacher.rope_cos[:t],
                               teacher.rope_sin[:t]), labels)


@torch.no_grad()
def greedy_removal(teacher, windows: torch.Tensor, down_to: int = 1, share: float = 0.1, log=print) -> list[dict]:
    """Remove layers by what removing each costs on the calibration loss, measured against the layers still kept;
    returns one entry per removed layer, in order ({"removed", "loss" of that removal alone, "round"}).

    Each round removes the cheapest `share` of the kept layers (at least one): a deep teacher's first rounds
    cost the most, and cutting several cheap layers per round there halves the time of one-at-a-time removal.
    The input to every kept layer is computed once a round, so a candidate reruns only the layers after it."""
    x, labels = windows[:, :-1], windows[:, 1:]
    t = x.shape[1]
    cos, sin = teacher.rope_cos[:t], teacher.rope_sin[:t]
    keep = list(range(teacher.cfg.num_hidden_layers))
    removed, t0, round_ = [], time.perf_counter(), 0
    while len(keep) > down_to:
        inputs = [teacher.model.embed_tokens(x)]
        for i in keep[:-1]:
            inputs.append(teacher.model.layers[i](inputs[-1], cos, sin))
        costs = sorted((_loss(teacher, _run(teacher, keep[j + 1:], inputs[j], cos, sin), labels), layer)
                       for j, layer in enumerate(keep))
        for loss, layer in costs[:min(max(1, int(len(keep) * share)), len(keep) - down_to)]:
            keep.remove(layer)
            removed.append({"removed": layer, "loss": round(loss, 4), "round": round_})
        log(f"layer ranking: {len(keep)} layers left, removed "
            f"{[r['removed'] for r in removed if r['round'] == round_]} (calibration loss {costs[0][0]:.3f}, "
            f"{time.perf_counter() - t0:.0f} s)")
        round_ += 1
    return removed


@torch.no_grad()
def hidden_states(teacher, windows: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's input and the last layer's output (before the final norm), [N, T, hidden] each."""
    x = windows[:, :-1]
    t = x.shape[1]
    cos, sin = teacher.rope_cos[:t], teacher.rope_sin[:t]
    hs = [teacher.model.embed_tokens(x)]
    for layer in teacher.model.layers:
        hs.append(layer(hs[-1], cos, sin))
    return hs


def block_influence(hs: list[torch.Tensor]) -> list[float]:
    """ShortGPT's BI per layer: 1 - mean cosine similarity of its input and output hidden states."""
    return [float(1 - F.cosine_similarity(a.float(), b.float(), dim=-1).mean()) for a, b in zip(hs, hs[1:])]


def angular_block(hs: list[torch.Tensor], n: int) -> int:
    """Start of the n contiguous layers whose removal joins the two closest hidden states (Gromov et al.)."""
    best = None
    for start in range(len(hs) - n):
        cos = F.cosine_similarity(hs[start].float(), hs[start + n].float(), dim=-1).clamp(-1, 1)
        d = float(torch.arccos(cos).mean() / math.pi)
        if best is None or d < best[0]:
            best = (d, start)
    return best[1]


def rank_layers(teacher, windows: torch.Tensor, method: str, down_to: int = 1, log=print) -> dict:
    """The ranking as plain data (kept in records and the cache): what keep_layers reads."""
    n = teacher.cfg.num_hidden_layers
    if method == "greedy":
        rounds = greedy_removal(teacher, windows, down_to, log=log)
        return {"method": method, "layers": n, "removal_order": [r["removed"] for r in rounds], "rounds": rounds}
    hs = hidden_states(teacher, windows)
    if method == "block_influence":
        bi = block_influence(hs)
        return {"method": method, "layers": n, "removal_order": sorted(range(n), key=lambda i: bi[i]),
                "block_influence": [round(b, 5) for b in bi]}
    if method == "angular":
        return {"method": method, "layers": n, "block_start": {str(r): angular_block(hs, r) for r in range(1, n)}}
    raise ValueError(f"unknown layer ranking {method!r}")


def keep_layers(ranking: dict, k: int) -> list[int]:
    """The teacher layers (in order) a k-layer student keeps under `ranking`."""
    n = ranking["layers"]
    if ranking["method"] == "angular":
        if k == n:
            return list(range(n))
        start = ranking["block_start"][str(n - k)]
        return [i for i in range(n) if not start <= i < start + n - k]
    removed = set(ranking["removal_order"][: n - k])
    return [i for i in range(n) if i not in removed]


@torch.no_grad()
def width_importance(teacher, windows: torch.Tensor, picks: list[int]) -> dict[str, list[torch.Tensor]]:
    """Per kept layer: FFN neuron importance [intermediate] and KV-group importance [kv_heads], measured through
    the kept layers (the student's own data path), as Minitron ranks width by activations."""
    x = windows[:, :-1]
    t = x.shape[1]
    cos, sin = teacher.rope_cos[:t], teacher.rope_sin[:t]
    ffn, groups = [], []
    h = teacher.model.embed_tokens(x)
    for i in picks:
        layer = teacher.model.layers[i]
        attn = layer.self_attn
        q, k, v = attn.qkv(layer.input_layernorm(h), cos, sin)
        rep = attn.n_head // attn.n_kv
        y = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                           is_causal=True)  # [B, H, T, D]
        groups.append(y.norm(dim=-1).mean(dim=(0, 2)).view(attn.n_kv, rep).sum(-1))
        h = h + attn.out(y)
        z = layer.post_attention_layernorm(h)
        act = F.silu(layer.mlp.gate_proj(z)) * layer.mlp.up_proj(z)
        ffn.append(act.abs().mean(dim=(0, 1)))
        h = h + layer.mlp.down_proj(act)
    return {"ffn": ffn, "kv_groups": groups}


def top_indices(importance: torch.Tensor, k: int) -> torch.Tensor:
    """The k most important indices, in their original order (so kept units keep their relative layout)."""
    return importance.topk(k).indices.sort().values


def cached_ranking(teacher, teacher_dir: Path, calib_ids: np.ndarray, method: str, seq_len: int, tokens: int,
                   log=print) -> dict:
    """rank_layers on `tokens` calibration tokens, computed once per teacher, text and method and kept in the
    edgedistil cache (a greedy ranking of a 30-layer teacher takes minutes on 2 cores; every run reuses it)."""
    from edgedistil.distill.evaluate import eval_windows
    from edgedistil.errors import atomic_file
    from edgedistil.records import folder_fingerprint
    from edgedistil.sources.cache import cache_dir

    windows = eval_windows(calib_ids, seq_len, tokens)
    key = hashlib.sha256(json.dumps([folder_fingerprint(Path(teacher_dir)), method,
                                     hashlib.sha256(windows.numpy().tobytes()).hexdigest()]).encode()).hexdigest()
    path = cache_dir() / "layer-rankings" / f"{key[:20]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    log(f"layer ranking: measuring the teacher's layers by {method} on {windows.numel():,} calibration tokens "
        f"(once; cached in {path.parent})")
    t0 = time.perf_counter()
    ranking = rank_layers(teacher, windows, method, log=log)
    ranking.update(calibration_tokens=int(windows.numel()), seconds=round(time.perf_counter() - t0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(ranking))
    return ranking
