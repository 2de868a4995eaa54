"""One training step of the distill stage from the teacher-logits cache, timed side by side with the top-k KD loss
written through autograd (as it was before edgedistil.distill.teacher_cache._TopkKD) and as shipped.

    python scripts/bench_train_step.py                      # the embedded default's student, batch and window
    python scripts/bench_train_step.py --config models/tiny.toml --steps 4

The student is the recipe's shape (even layers: which layers are kept does not change a step's cost), trained as
the stage trains it: frozen embedding if the recipe freezes it, the recipe's autocast precision, fused AdamW,
grad clip. The two losses alternate step by step on the same batches, after warm-up steps, so machine noise falls
on both; the result is each one's median seconds per step (forward, loss, backward, optimizer) and their ratio.
Writes docs/results/train_step_<recipe>.json (or --json PATH). Run it on idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgedistil.records import machine

REPO = Path(__file__).resolve().parent.parent


def autograd_topk_kd_loss(student_logits, topk_ids, topk_logits, labels, alpha, temperature):
    """The same loss as teacher_cache.topk_kd_loss, differentiated by autograd."""
    v = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, v)
    ce = F.cross_entropy(s, labels.reshape(-1))
    log_p_s = F.log_softmax(s / temperature, dim=-1).gather(-1, topk_ids.reshape(-1, topk_ids.shape[-1]))
    log_p_t = F.log_softmax(topk_logits.reshape(-1, topk_logits.shape[-1]).float() / temperature, dim=-1)
    div = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    return alpha * temperature**2 * div + (1.0 - alpha) * ce, {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="recipe TOML (default: the built-in default)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per loss (after 2 warm-up steps each)")
    ap.add_argument("--json", default=None, help="output path")
    args = ap.parse_args()

    from edgedistil.build import Run
    from edgedistil.config import load_recipe
    from edgedistil.distill.student import build_student
    from edgedistil.distill.teacher_cache import topk_kd_loss
    from edgedistil.distill.train import pick_device
    from edgedistil.model import load_hf_folder

    recipe = load_recipe(args.config)
    name = Path(args.config).stem if args.config else "default"
    dest = Path(args.json) if args.json else REPO / "docs" / "results" / f"train_step_{name}.json"
    d, s = recipe.distill, recipe.student
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgedistil-bench-step-") as tmp:  # the tiny teacher lives in the run
        teacher_dir = Run(out=Path(tmp), recipe=recipe, log=lambda m: print(m, file=sys.stderr)).teacher_dir()
        teacher = load_hf_folder(teacher_dir).float()
    student = build_student(teacher, s.layers, "even", intermediate_size=s.intermediate_size, heads=s.heads)[0]
    del teacher
    device, amp_dtype = pick_device("cpu", d.precision)
    if d.freeze_embeddings:
        student.model.embed_tokens.weight.requires_grad_(False)
    trained = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-5, betas=(0.9, 0.95), fused=True)
    autocast = torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None)
    vocab, k = student.cfg.vocab_size, d.teacher_topk or 128
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (d.batch_size, recipe.data.seq_len + 1), generator=g)
    top_ids = torch.randint(0, vocab, (d.batch_size, recipe.data.seq_len, k), generator=g)
    top_logits = torch.randn(d.batch_size, recipe.data.seq_len, k, generator=g).half()

    def step(loss_fn) -> list[float]:
        t = [time.perf_counter()]
        with autocast:
            logits = student(x[:, :-1])
        t.append(time.perf_counter())
        loss, _ = loss_fn(logits, top_ids, top_logits, x[:, 1:], d.alpha, d.temperature)
        loss.detach().item()  # the loss is computed before the clock moves on
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(trained, d.grad_clip)
        opt.step()
        t.append(time.perf_counter())
        return [b - a for a, b in zip(t, t[1:])]

    losses = {"autograd": autograd_topk_kd_loss, "shipped": topk_kd_loss}
    for fn in losses.values():
        for _ in range(2):
            step(fn)
    times = {label: [] for label in losses}
    for _ in range(args.steps):
        for label, fn in losses.items():
            times[label].append(step(fn))
    tokens = d.batch_size * recipe.data.seq_len
    runs = {}
    for label, rows in times.items():
        parts = {part: round(statistics.median(r[i] for r in rows), 4)
                 for i, part in enumerate(("forward", "loss", "backward", "optimizer"))}
        total = statistics.median(sum(r) for r in rows)
        runs[label] = {"seconds_per_step": round(total, 4), "tokens_per_s": round(tokens / total, 1), **parts}
    ratio = runs["autograd"]["seconds_per_step"] / runs["shipped"]["seconds_per_step"]
    result = {
        "recipe": name, "command": "python scripts/bench_train_step.py"
        + (f" --config {args.config}" if args.config else "") + f" --steps {args.steps}",
        "student": {"layers": s.layers, "intermediate_size": s.intermediate_size or "the teacher's",
                    "vocab": vocab, "frozen_embedding": d.freeze_embeddings},
        "batch": {"batch_size": d.batch_size, "seq_len": recipe.data.seq_len, "teacher_topk": k},
        "precision": f"{amp_dtype} autocast" if amp_dtype else "fp32", "threads": torch.get_num_threads(),
        "runs": runs, "speedup_shipped_vs_autograd": round(ratio, 3),
        "machine": machine(load_before),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    for label, r in runs.items():
        print(f"{label:>9}: {r['seconds_per_step']:.3f} s/step ({r['tokens_per_s']:.0f} tok/s; forward {r['forward']:.3f}, "
              f"loss {r['loss']:.3f}, backward {r['backward']:.3f}, optimizer {r['optimizer']:.3f})")
    print(f"shipped loss: {ratio:.2f}x the autograd loss's step rate; written to {dest}")


if __name__ == "__main__":
    main()
