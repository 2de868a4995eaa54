"""`edgedistil plan`: candidate students for a teacher, before any training, so the quality cliff shows first.

For layer counts x FFN widths, each candidate is the measured prune the distill stage would start from
(prune.py: the ranking `init = "auto"` uses, FFN neurons by activation) and is scored with forward passes only:

- parameters, and file size per precision (an estimate from the parameter count: 4, 2, 1 and 0.5 bytes a
  weight, the 4-bit file keeping the tied embedding at 8 bits as the int4 method does);
- zero-shot quality: teacher cross-entropy / candidate cross-entropy on held-out text, before distillation
  (what distillation starts from; after training it rises, and a worse start stays worse at small budgets);
- decode speed projected from weight bytes (decode reads every layer's weights and the LM head once a token:
  the recipe's `[student] head_rows` of it when the head is trimmed), as a speedup over the teacher at the same
  precision;
- for a few candidates, decode speed measured on ONNX Runtime (fp32, one thread, the export stage's graph)
  beside the teacher's, so the projection can be checked: `--rounds` rounds alternating teacher and candidates,
  each candidate's speedup the median of its per-round ratios (this machine's speed drifts by 20-30% over hours).

The plan recommends the candidate with the best zero-shot quality among those projected at or above
`--min-speedup`, and writes plan.json, plan.md and plan.png.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgedistil.errors import EdgeError, atomic_dir, write_json

BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


@dataclasses.dataclass
class Candidate:
    layers: int
    ffn: int
    teacher_layers: list[int]
    parameters: int
    size_mb: dict
    zero_shot_ce: float
    quality_retained: float
    projected_speedup: float
    measured_speedup: float | None = None  # the median of its per-round ratios to the teacher (paired_speedups)
    measured_tokens_per_s: float | None = None
    measured_ratios: list[float] | None = None  # one per round


def weight_split(model) -> tuple[int, int]:
    """(parameters in the decoder layers, parameters of the vocabulary matrix): a tied head is counted once."""
    layers = sum(p.numel() for p in model.model.layers.parameters())
    return layers, model.model.embed_tokens.weight.numel()


def size_mb(layer_params: int, vocab_params: int, untied_head: int) -> dict:
    out = {}
    for precision, b in BYTES_PER_WEIGHT.items():
        vocab_b = max(b, 1.0) if precision == "int4" else b  # int4 keeps the lookup table and head at 8 bits
        out[precision] = round((layer_params * b + (vocab_params + untied_head) * vocab_b) / 1e6, 3)
    return out


def decode_bytes(layer_params: int, vocab_params: int) -> int:
    """Weights a decode step reads: every layer, and the LM head (the embedding lookup reads one row)."""
    return layer_params + vocab_params


def head_params(model, head_rows: int) -> int:
    """Parameters of the LM head a decode step reads: `head_rows` rows of it when trimmed (0: all of them)."""
    vocab, hidden = model.model.embed_tokens.weight.shape
    return (head_rows or vocab) * hidden


def time_decode(path: Path) -> float:
    """fp32 decode tok/s of an exported graph on ONNX Runtime (1 thread), in a fresh process (decode_probe)."""
    proc = subprocess.run([sys.executable, "-m", "edgedistil.bench.decode_probe", "ort", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgeError(f"plan: timing an exported candidate failed: {proc.stderr.strip().splitlines()[-1:]}",
                        "rerun with --measure 0 to skip measured speeds")
    return float(proc.stdout.split()[0])


def paired_speedups(teacher, students: dict, max_len: int, prefill_len: int, rounds: int = 3) -> dict:
    """Each student's fp32 decode speed over the teacher's, timed in alternating rounds (teacher, then every
    student, `rounds` times) so that the machine's drift over minutes falls on both sides of each ratio: per
    student the median of its per-round ratios, the spread, and the median tok/s."""
    import statistics

    from edgedistil.export.onnx import trace_full

    with tempfile.TemporaryDirectory(prefix="edgedistil-plan-") as tmp:
        paths = {}
        for name, model in {"teacher": teacher, **students}.items():
            paths[name] = Path(tmp) / f"{name}.onnx"
            trace_full(model.float().eval(), paths[name], max_len, prefill_len)
        tps = {name: [] for name in paths}
        for _ in range(rounds):
            for name, path in paths.items():
                tps[name].append(time_decode(path))
    out = {}
    for name in students:
        ratios = [s / t for s, t in zip(tps[name], tps["teacher"])]
        out[name] = {"speedup": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
                     "tokens_per_s": round(statistics.median(tps[name]), 1),
                     "teacher_tokens_per_s": round(statistics.median(tps["teacher"]), 1)}
    return out


@torch.no_grad()
def run_plan(teacher_dir: Path, corpus, recipe, out_dir: Path, layer_counts: list[int], ffn_widths: list[int],
             min_speedup: float, measure: int = 3, rounds: int = 3, log=print) -> dict:
    from edgedistil.distill import prune
    from edgedistil.distill.data import load_tokenizer, need_tokens, tokenize
    from edgedistil.distill.evaluate import eval_windows
    from edgedistil.distill.student import build_student
    from edgedistil.distill.train import CALIBRATION_TOKENS
    from edgedistil.model import load_hf_folder
    from edgedistil.sources import split_corpus

    t0 = time.perf_counter()
    teacher = load_hf_folder(teacher_dir).float().eval()
    tc = teacher.cfg
    bad = [k for k in layer_counts if not 1 <= k <= tc.num_hidden_layers]
    if bad:
        raise EdgeError(f"plan: --layers {bad[0]} is outside the teacher's 1..{tc.num_hidden_layers} layers",
                        f"pass layer counts between 1 and {tc.num_hidden_layers}")
    bad = [w for w in ffn_widths if not 1 <= w <= tc.intermediate_size]
    if bad:
        raise EdgeError(f"plan: --ffn {bad[0]} is outside the teacher's FFN width 1..{tc.intermediate_size}",
                        f"pass widths up to {tc.intermediate_size}")
    tok = load_tokenizer(teacher_dir)
    seq = recipe.data.seq_len
    train_docs, heldout_text = split_corpus(corpus, recipe.data.heldout_fraction)
    train_text = "\n".join(train_docs)
    calib_ids, held_ids = tokenize(tok, train_text[:200_000]), tokenize(tok, heldout_text[:200_000])
    need_tokens(held_ids, seq + 1, "held-out", corpus.name)
    windows = eval_windows(held_ids, seq, recipe.distill.eval_tokens)
    calib = eval_windows(calib_ids, seq, CALIBRATION_TOKENS)
    ranking = prune.cached_ranking(teacher, teacher_dir, calib_ids, prune.AUTO_RANKING, seq, CALIBRATION_TOKENS,
                                   log)
    teacher_ce = prune.keep_loss(teacher, windows, list(range(tc.num_hidden_layers)))
    t_layers, t_vocab = weight_split(teacher)
    untied = 0 if tc.tie_word_embeddings else t_vocab
    teacher_bytes = decode_bytes(t_layers, t_vocab)
    head_rows = recipe.student.head_rows if 0 < recipe.student.head_rows < tc.vocab_size else 0
    candidates, importance = [], {}  # importance: FFN activations per layer count, measured once

    def candidate_student(k: int, w: int):
        picks = prune.keep_layers(ranking, k)
        if k not in importance:
            importance[k] = prune.width_importance(teacher, calib, picks)["ffn"]
        width = {"ffn": [prune.top_indices(f, w) for f in importance[k]], "kv_groups": None} \
            if w < tc.intermediate_size else None
        return picks, build_student(teacher, k, picks, intermediate_size=w, width=width)[0]

    for k in sorted(set(layer_counts)):
        for w in sorted(set(ffn_widths), reverse=True):
            picks, student = candidate_student(k, w)
            s_layers, s_vocab = weight_split(student)
            s_head = head_params(student, head_rows)
            ce = prune.keep_loss(student, windows, list(range(k)))
            candidates.append(Candidate(
                layers=k, ffn=w, teacher_layers=picks, parameters=sum(p.numel() for p in student.parameters()),
                size_mb=size_mb(s_layers, s_vocab, untied + (s_head if head_rows else 0)), zero_shot_ce=round(ce, 4),
                quality_retained=round(teacher_ce / ce, 4),
                projected_speedup=round(teacher_bytes / decode_bytes(s_layers, s_head), 3)))
            c = candidates[-1]
            log(f"plan: {k} layers x FFN {w}: {c.parameters / 1e6:.1f}M params, quality retained "
                f"{c.quality_retained:.3f} before training, projected {c.projected_speedup:.2f}x")
    meeting = [c for c in candidates if c.projected_speedup >= min_speedup]
    best = max(meeting, key=lambda c: c.quality_retained) if meeting else None
    measured = {}
    if measure:
        e = recipe.export
        log(f"plan: timing fp32 decode on ONNX Runtime (1 thread) for the teacher and a few candidates, "
            f"{rounds} alternating round(s)")
        by_speed = sorted(candidates, key=lambda c: c.projected_speedup)
        picks = ([best] if best else []) + [by_speed[0], by_speed[-1], by_speed[len(by_speed) // 2]] + by_speed
        chosen = list({id(c): c for c in picks}.values())[:measure]  # the recommended, the extremes, the middle
        students = {}
        for c in chosen:
            _, student = candidate_student(c.layers, c.ffn)
            if head_rows:  # which rows a trimmed head keeps does not change a step's cost: the first ones stand in
                student = student.trim_head(list(range(head_rows)))
            students[f"{c.layers}x{c.ffn}"] = student
        timed = paired_speedups(teacher, students, e.max_len, e.prefill_len, rounds)
        for c in chosen:
            t = timed[f"{c.layers}x{c.ffn}"]
            c.measured_tokens_per_s, c.measured_speedup = t["tokens_per_s"], t["speedup"]
            c.measured_ratios = t["ratios"]
            log(f"plan: {c.layers} layers x FFN {c.ffn}: measured {c.measured_speedup:.2f}x "
                f"(projected {c.projected_speedup:.2f}x; per round {', '.join(f'{r:.2f}' for r in c.measured_ratios)})")
        measured.update(teacher_tokens_per_s=next(iter(timed.values()))["teacher_tokens_per_s"], rounds=rounds)
    record = {
        "stage": "plan", "teacher": str(teacher_dir), "corpus": corpus.name,
        "teacher_layers": tc.num_hidden_layers, "teacher_ffn": tc.intermediate_size,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "teacher_zero_shot_ce": round(teacher_ce, 4), "heldout_tokens": int(windows[:, 1:].numel()),
        "ranking": {k: v for k, v in ranking.items() if k in ("method", "removal_order", "calibration_tokens")},
        "min_speedup": min_speedup, "head_rows": head_rows,
        "recommended": dataclasses.asdict(best) if best else None,
        "candidates": [dataclasses.asdict(c) for c in candidates],
        "measured": measured,
        "basis": {"size": "estimate: 4/2/1/0.5 bytes a weight (int4 keeps the vocabulary matrix at 8 bits; a "
                          "trimmed head counted as its own matrix, which web's int8 reads from the embedding's)",
                  "projected_speedup": "teacher weight bytes read per decode step / the candidate's",
                  "quality_retained": "teacher CE / candidate CE on held-out text, before any training"},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with atomic_dir(Path(out_dir)) as tmp:
        write_json(tmp / "plan.json", record)
        (tmp / "plan.md").write_text(plan_markdown(record), encoding="utf-8")
        plot_plan(record, tmp / "plan.png")
    return record


def plan_markdown(record: dict) -> str:
    rows = ["| layers | FFN | params | fp32 MB | int8 MB | int4 MB | quality retained (zero-shot) | projected speedup "
            "| measured speedup |", "|---|---|---|---|---|---|---|---|---|"]
    for c in record["candidates"]:
        measured = f"{c['measured_speedup']:.2f}x" if c["measured_speedup"] is not None else ""
        rows.append(f"| {c['layers']} | {c['ffn']} | {c['parameters'] / 1e6:.1f}M | {c['size_mb']['fp32']} | "
                    f"{c['size_mb']['int8']} | {c['size_mb']['int4']} | {c['quality_retained']:.3f} | "
                    f"{c['projected_speedup']:.2f}x | {measured} |")
    best = record["recommended"]
    head = (f"# Candidate students for {record['teacher']}\n\nTeacher: {record['teacher_layers']} layers, FFN "
            f"{record['teacher_ffn']}, {record['teacher_parameters'] / 1e6:.1f}M parameters; held-out "
            f"{record['corpus']} ({record['heldout_tokens']} tokens).\n\n")
    tail = (f"\nRecommended at >= {record['min_speedup']}x: {best['layers']} layers x FFN {best['ffn']} "
            f"(quality retained {best['quality_retained']:.3f} before training, projected "
            f"{best['projected_speedup']:.2f}x).\n" if best else
            f"\nNo candidate is projected at >= {record['min_speedup']}x: add smaller layer counts or widths.\n")
    return head + "\n".join(rows) + "\n" + tail


def plot_plan(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for w in sorted({c["ffn"] for c in record["candidates"]}, reverse=True):
        cs = sorted((c for c in record["candidates"] if c["ffn"] == w), key=lambda c: c["projected_speedup"])
        ax.plot([c["projected_speedup"] for c in cs], [c["quality_retained"] for c in cs], marker="o",
                label=f"FFN {w}")
        for c in cs:
            ax.annotate(str(c["layers"]), (c["projected_speedup"], c["quality_retained"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axvline(record["min_speedup"], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("projected decode speedup over the teacher (same precision)")
    ax.set_ylabel("quality retained before training (CE ratio)")
    ax.set_title("Candidate students: the quality cliff (labels: layers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

