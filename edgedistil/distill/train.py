"""The distill stage: teacher + corpus + recipe -> student HF folder, train.jsonl curve, eval.json and record.json.

Response-based KD on random corpus windows: the student is trained to match the teacher's softened next-token
distribution (plus a little CE on the real next token). One file, one workflow.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from edgedistil.config import Recipe
from edgedistil.distill.data import check_vocab, load_tokenizer, need_tokens, sample_blocks, tokenize
from edgedistil.distill.evaluate import compare_on_heldout, eval_windows
from edgedistil.distill.losses import kd_loss
from edgedistil.distill.student import build_student
from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.model import load_hf_folder, save_hf_folder
from edgedistil.sources import Corpus, split_heldout


def pick_device(want: str) -> tuple[str, torch.dtype | None]:
    """`auto` takes CUDA with bf16 autocast when there is a GPU, else the CPU in fp32."""
    if want == "cuda" and not torch.cuda.is_available():
        raise EdgeError("[distill] device = 'cuda' but PyTorch sees no CUDA GPU", "set device = 'auto' or 'cpu'")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", None


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_distill(teacher_dir: Path, corpus: Corpus, recipe: Recipe, out_dir: Path, log=print) -> dict:
    """Distill a student from `teacher_dir` on `corpus`; writes `out_dir` atomically and returns the record."""
    d, data = recipe.distill, recipe.data
    device, amp_dtype = pick_device(d.device)
    torch.manual_seed(d.seed)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_hf_folder(teacher_dir).eval().requires_grad_(False)
    check_vocab(tokenizer, teacher.cfg.vocab_size, "the teacher")
    student, picks = build_student(teacher, recipe.student.layers)

    train_text, heldout_text = split_heldout(corpus.text, data.heldout_fraction)
    train_ids, heldout_ids = tokenize(tokenizer, train_text), tokenize(tokenizer, heldout_text)
    need_tokens(train_ids, data.seq_len + 1, "training", corpus.name)
    need_tokens(heldout_ids, data.seq_len + 1, "held-out", corpus.name)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    log(f"distill: teacher {n_teacher / 1e6:.1f}M params, {teacher.cfg.num_hidden_layers} layers -> student "
        f"{n_student / 1e6:.1f}M params, layers {picks}; corpus '{corpus.name}' {len(train_ids):,} train / "
        f"{len(heldout_ids):,} held-out tokens; device {device}{' bf16' if amp_dtype else ''}")

    teacher.to(device)
    student.to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=d.lr, weight_decay=d.weight_decay, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(d.seed)
    autocast = torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None)

    with atomic_dir(out_dir) as tmp:
        curve = []
        # a live bar on a terminal; in logs (CI, pipes) a plain line every tenth of the run instead
        bar = tqdm(range(d.steps), desc="distill", unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=not sys.stderr.isatty())
        every = max(1, d.steps // 10)
        t0 = time.perf_counter()
        tokens_seen = 0
        for step in bar:
            lr = lr_at(step, d.steps, d.warmup_steps, d.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            x = sample_blocks(train_ids, d.batch_size, data.seq_len + 1, gen).to(device)
            inputs, labels = x[:, :-1], x[:, 1:]
            with autocast:
                with torch.no_grad():
                    t_logits = teacher(inputs)
                s_logits = student(inputs)
            loss, parts = kd_loss(s_logits, t_logits, labels, d.alpha, d.temperature)
            if not math.isfinite(parts["loss"]):
                raise EdgeError(f"the distillation loss became {parts['loss']} at step {step}",
                                "lower [distill] lr or raise warmup_steps in the recipe")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), d.grad_clip))
            opt.step()
            tokens_seen += inputs.numel()
            elapsed = time.perf_counter() - t0
            row = {"step": step, "lr": lr, **parts, "grad_norm": grad_norm, "tokens": tokens_seen,
                   "seconds": round(elapsed, 3)}
            curve.append(row)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", kl=f"{parts['kl']:.3f}", tok_s=f"{tokens_seen / elapsed:.0f}")
            if bar.disable and ((step + 1) % every == 0 or step + 1 == d.steps):
                eta = elapsed / (step + 1) * (d.steps - step - 1)
                log(f"distill: step {step + 1}/{d.steps} loss {parts['loss']:.3f} kl {parts['kl']:.3f} "
                    f"{tokens_seen / elapsed:.0f} tok/s, ETA {eta:.0f} s")
        bar.close()
        train_seconds = time.perf_counter() - t0
        (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))

        student.eval()
        windows = eval_windows(heldout_ids, data.seq_len, d.eval_tokens)
        with autocast:
            quality = compare_on_heldout(student, teacher, windows, device=device)
        write_json(tmp / "eval.json", quality)
        log(f"distill: held-out perplexity student {quality['student_perplexity']:.2f} vs teacher "
            f"{quality['teacher_perplexity']:.2f}, top-1 agreement {quality['top1_agreement_with_teacher']:.3f}")

        save_hf_folder(student.to("cpu").float(), tmp / "student", tokenizer_from=teacher_dir)
        heldout_path = tmp / "heldout.txt"
        heldout_path.write_text(heldout_text, encoding="utf-8")
        record = {
            "stage": "distill",
            "teacher": str(teacher_dir),
            "corpus": {"name": corpus.name, "source": corpus.source, "license": corpus.license,
                       "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(heldout_ids))},
            "student": {"layers": recipe.student.layers, "init": recipe.student.init, "teacher_layers": picks,
                        "parameters": n_student},
            "teacher_parameters": n_teacher,
            "config": recipe.section("distill"),
            "device": device + (" bf16 autocast" if amp_dtype else " fp32"),
            "train_seconds": round(train_seconds, 2),
            "train_tokens_per_s": round(tokens_seen / train_seconds, 1),
            "final_loss": curve[-1]["loss"],
            "quality": quality,
        }
        write_json(tmp / "record.json", record)
    return record
