"""Teacher correction (Minitron, Sreenivas et al. 2024): a short fine-tune of the teacher on the distillation corpus
before it teaches (`[distill] teacher_correction_steps = N`).

A teacher that models the corpus poorly (SmolLM2-135M-Instruct on the KJV: perplexity 40) hands the student soft
labels that are far from the text, and KD then loses to plain CE. Fine-tuning the teacher on the training split
first moves its distribution to the corpus; the student is then pruned from, and distilled by, the corrected
teacher. The original teacher stays the one the distill record names and the eval stage and the benchmarks compare
against: it is the model the user gave.

One-time work: the corrected teacher is an HF folder in the edgedistil cache, keyed by the teacher, the training
text and the correction settings, written atomically together with its record, so every later run with the same
inputs reuses it. It is trained with CE on windows of the training split only (never the held-out text), with the
distill stage's own optimizer settings (AdamW 0.9/0.95, warmup and cosine decay, grad clip, micro-batches), all
weights trained, on rank 0 alone under torchrun.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgedistil.distill.data import sample_blocks
from edgedistil.errors import EdgeError, atomic_dir, read_json, write_json
from edgedistil.records import folder_fingerprint, stage_key

RECORD = "correction.json"


def corrected_folder(teacher_dir: Path, train_text: str, recipe, amp_dtype) -> Path:
    from edgedistil.sources.cache import cache_dir

    d, data = recipe.distill, recipe.data
    key = stage_key("teacher-correction", folder_fingerprint(Path(teacher_dir)),
                    hashlib.sha256(train_text.encode()).hexdigest(), d.teacher_correction_steps,
                    d.teacher_correction_lr, d.batch_size, d.grad_accum, data.seq_len, data.windows, d.seed,
                    d.warmup_steps, d.grad_clip, d.eval_tokens, str(amp_dtype))
    return cache_dir() / "teachers-corrected" / key


def correct_teacher(teacher_dir: Path, train_ids: np.ndarray, starts: np.ndarray | None, heldout: torch.Tensor,
                    recipe, folder: Path, device: str, autocast, log=print) -> dict:
    """Fine-tune the teacher with CE on `train_ids` windows and save it to `folder` (an HF folder with the
    teacher's tokenizer files and the record); returns the record, with held-out perplexity before and after on
    the windows `heldout`."""
    from tqdm import tqdm

    from edgedistil.distill.evaluate import student_only_quality
    from edgedistil.distill.train import lr_at
    from edgedistil.model import load_hf_folder, save_hf_folder

    d, seq_len = recipe.distill, recipe.data.seq_len
    steps, peak = d.teacher_correction_steps, d.teacher_correction_lr
    teacher = load_hf_folder(teacher_dir).to(device).eval()
    with torch.no_grad():
        before = student_only_quality(teacher, heldout, "", device=device)["student_perplexity"]
    teacher.train()
    params = [p for p in teacher.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.0, betas=(0.9, 0.95), fused=True)
    sampler = torch.Generator().manual_seed(d.seed + 1)  # not the student's draws
    log(f"distill: teacher correction: {steps} steps of CE on the training split at lr {peak} (once; cached in "
        f"{folder})")
    bar = tqdm(range(steps), desc="teacher correction", unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=not sys.stderr.isatty())
    curve, t0 = [], time.perf_counter()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, min(d.warmup_steps, steps // 2), peak)
        x = sample_blocks(train_ids, d.batch_size, seq_len + 1, sampler, starts).to(device)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for mb in x.chunk(d.grad_accum):
            with autocast:
                logits = teacher(mb[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), mb[:, 1:].reshape(-1))
            (loss / d.grad_accum).backward()
            total += loss.item() / d.grad_accum
        if not math.isfinite(total):
            raise EdgeError(f"the teacher correction's loss became {total} at step {step}",
                            "lower [distill] teacher_correction_lr in the recipe")
        torch.nn.utils.clip_grad_norm_(params, d.grad_clip)
        opt.step()
        curve.append(round(total, 4))
        bar.set_postfix(loss=f"{total:.3f}")
    seconds = time.perf_counter() - t0
    teacher.eval()
    with torch.no_grad():
        after = student_only_quality(teacher, heldout, "", device=device)["student_perplexity"]
    record = {"source": str(teacher_dir), "steps": steps, "lr": peak, "batch_size": d.batch_size,
              "seq_len": seq_len, "tokens": steps * d.batch_size * seq_len, "seconds": round(seconds, 1),
              "loss_first": curve[0] if curve else None, "loss_last": curve[-1] if curve else None,
              "heldout_tokens": int(heldout[:, 1:].numel()), "heldout_perplexity_before": round(before, 4),
              "heldout_perplexity_after": round(after, 4)}
    with atomic_dir(folder) as tmp:
        save_hf_folder(teacher.float().cpu(), tmp, tokenizer_from=teacher_dir)
        write_json(tmp / RECORD, record)
    log(f"distill: teacher correction done in {seconds:.0f} s: held-out perplexity {before:.2f} -> {after:.2f}")
    return record


def load_record(folder: Path) -> dict | None:
    path = Path(folder) / RECORD
    return read_json(path, "teacher correction record") if path.is_file() else None
