"""How much of the vocabulary a student needs, and what a smaller output head would buy in decode speed.

    python scripts/bench_vocab.py                       # the embedded default -> docs/results/vocab_head.json
    python scripts/bench_vocab.py --measure 0           # coverage and projections only (no timing)

Why: a decode step of the default student spends 28.3M of its 65.5M multiply-adds in the 49,152-row output head
it shares with the teacher, so the head bounds the student's speedup (2.05x at 14 layers; docs/android.md). An
English chat student uses a fraction of those rows. This measures, before anything is built on it:

- coverage: the K tokens the teacher puts the most probability on over the training split (its softmax summed
  over every position; the 256 byte tokens and the special tokens always kept, so any text stays spellable), and
  on held-out text (the recipe's held-out conversations, and the corpus never trained on): the share of next
  tokens inside them, the teacher's probability mass inside them, and how often the teacher's top-1 is inside;
- the cost on the teacher itself: its perplexity with its head restricted to the K rows (renormalized), over the
  positions whose next token is kept, beside its full perplexity over the same positions;
- decode speed: projected from the weights a step reads (the layers and K head rows; the embedding lookup reads
  one row), and measured on ONNX Runtime (fp32, 1 thread, the export stage's graph) for students whose head is K
  rows read back into full-vocabulary logits (EdgeLM.trim_head, as `[student] head_rows` ships it; until
  2026-12-07 this timed a scatter into a row of -inf), so the runtimes' contract stays as it is.

Students here are untrained evenly spaced cuts: a step's cost does not depend on which layers are kept.
Measure with idle cores; each speedup is the median of rounds that alternate with the teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRAIN_TOKENS = 65_536
SIZES = (4096, 8192, 12288, 16384, 24576, 32768)


@torch.no_grad()
def coverage(teacher, windows: torch.Tensor, kept_sets: dict[int, torch.Tensor]) -> dict:
    rows = {k: {"label_in": 0.0, "mass_in": 0.0, "top1_in": 0.0, "nll_full": 0.0, "nll_kept": 0.0, "n_in": 0}
            for k in kept_sets}
    n = 0
    for i in range(0, len(windows), 8):
        x = windows[i:i + 8]
        logp = teacher(x[:, :-1]).float().log_softmax(-1).reshape(-1, teacher.cfg.vocab_size)
        labels = x[:, 1:].reshape(-1)
        n += labels.numel()
        top1 = logp.argmax(-1)
        for k, kept in kept_sets.items():
            mask = torch.zeros(teacher.cfg.vocab_size, dtype=torch.bool)
            mask[kept] = True
            r = rows[k]
            inside = mask[labels]
            r["label_in"] += float(inside.sum())
            r["mass_in"] += float(logp[:, mask].exp().sum())
            r["top1_in"] += float(mask[top1].sum())
            full = -logp.gather(1, labels[:, None])[:, 0]
            restricted = -(logp[:, kept].log_softmax(-1))
            pos = torch.full((teacher.cfg.vocab_size,), -1, dtype=torch.long)
            pos[kept] = torch.arange(len(kept))
            lab = pos[labels]
            r["nll_full"] += float(full[inside].sum())
            r["nll_kept"] += float(restricted[inside].gather(1, lab[inside][:, None]).sum())
            r["n_in"] += int(inside.sum())
    out = {}
    for k, r in rows.items():
        m = max(r["n_in"], 1)
        out[str(k)] = {"next_token_inside": round(r["label_in"] / n, 5),
                       "teacher_mass_inside": round(r["mass_in"] / n, 5),
                       "teacher_top1_inside": round(r["top1_in"] / n, 5),
                       "teacher_perplexity_full_head": round(float(np.exp(r["nll_full"] / m)), 4),
                       "teacher_perplexity_k_head": round(float(np.exp(r["nll_kept"] / m)), 4)}
    return {"tokens": n, "by_k": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="recipe TOML (default: the embedded default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="head rows K to measure, comma-separated")
    ap.add_argument("--layers", default="14,18,21", help="student layer counts to project and time")
    ap.add_argument("--time-k", type=int, default=16384, help="head rows of the timed students")
    ap.add_argument("--measure", type=int, default=1, help="1: time the students on ONNX Runtime; 0: projections")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds, each alternating with the teacher")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "vocab_head.json"))
    args = ap.parse_args()

    from edgedistil.build import Run
    from edgedistil.config import load_recipe
    from edgedistil.distill.data import tokenize
    from edgedistil.distill.evaluate import eval_windows
    from edgedistil.distill.head import always_kept, probability_mass
    from edgedistil.distill.student import build_student
    from edgedistil.errors import write_json
    from edgedistil.model import load_hf_folder
    from edgedistil.plan import decode_bytes, paired_speedups, weight_split
    from edgedistil.sources import load_corpus, split_corpus
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    recipe = load_recipe(args.config, args.overrides)
    sizes = [int(x) for x in args.sizes.split(",")]
    layer_counts = [int(x) for x in args.layers.split(",")]
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="edgedistil-bench-vocab-") as tmp:
        run = Run(out=Path(tmp), recipe=recipe, log=log)
        teacher_dir, corpus = run.teacher_dir(), run.corpus()
        teacher = load_hf_folder(teacher_dir).float().eval()  # a tiny recipe's teacher lives in the run folder
        tok = Tokenizer.from_file(str(teacher_dir / "tokenizer.json"))
    tc = teacher.cfg
    seq = recipe.data.seq_len
    train_docs, heldout_text = split_corpus(corpus, recipe.data.heldout_fraction)
    train = eval_windows(tokenize(tok, "\n".join(train_docs)[:400_000]), seq, TRAIN_TOKENS)
    log(f"vocab: the teacher's mass over {train[:, :-1].numel():,} training tokens")
    mass = probability_mass(teacher, train)
    base = always_kept(tok)
    order = [i for i in mass.argsort(descending=True).tolist() if i not in set(base)]
    kept_sets = {k: torch.tensor(sorted(base + order[:k - len(base)])) for k in sizes}
    heldouts = {"heldout": eval_windows(tokenize(tok, heldout_text[:200_000]), seq, recipe.distill.eval_tokens)}
    if recipe.data.heldout_corpus:
        other = load_corpus(recipe.data.heldout_corpus, log=log)
        heldouts[other.name] = eval_windows(tokenize(tok, other.text[:200_000]), seq, recipe.distill.eval_tokens)
    cover = {}
    for name, w in heldouts.items():
        log(f"vocab: coverage on {name}")
        cover[name] = coverage(teacher, w, kept_sets)

    t_layers, t_vocab = weight_split(teacher)
    teacher_bytes = decode_bytes(t_layers, t_vocab)
    s = recipe.student
    kept = kept_sets.get(args.time_k, torch.tensor(sorted(base + order[:args.time_k - len(base)])))
    students, timed = [], {}
    for k in layer_counts:
        student = build_student(teacher, k, "even", intermediate_size=s.intermediate_size, heads=s.heads)[0]
        s_layers, s_vocab = weight_split(student)
        students.append({"layers": k, "ffn": s.intermediate_size or tc.intermediate_size,
                         "projected_speedup_full_head": round(teacher_bytes / decode_bytes(s_layers, s_vocab), 3),
                         "projected_speedup_k_head": round(
                             teacher_bytes / decode_bytes(s_layers, args.time_k * tc.hidden_size), 3)})
        if args.measure:
            trimmed = build_student(teacher, k, "even", intermediate_size=s.intermediate_size, heads=s.heads)[0]
            trimmed.trim_head(kept)
            timed[f"{k} full"], timed[f"{k} k"] = student, trimmed
    load_before = os.getloadavg()[0]
    if args.measure:
        speeds = paired_speedups(teacher, timed, recipe.export.max_len, recipe.export.prefill_len, args.rounds)
        for row in students:
            full, small = speeds[f"{row['layers']} full"], speeds[f"{row['layers']} k"]
            row.update(measured_speedup_full_head=full["speedup"], measured_speedup_k_head=small["speedup"],
                       rounds={"full_head": full["ratios"], "k_head": small["ratios"]},
                       measured_tokens_per_s={"full_head": full["tokens_per_s"], "k_head": small["tokens_per_s"],
                                              "teacher": full["teacher_tokens_per_s"]})
    for row in students:
        log(f"vocab: {row}")

    result = {
        "command": "python scripts/bench_vocab.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "teacher": str(teacher_dir), "vocab_size": tc.vocab_size, "always_kept": len(base),
        "ranking": "the teacher's softmax summed over every position of the training split",
        "training_tokens_ranked": int(train[:, :-1].numel()),
        "coverage": cover,
        "timing": {"runtime": "ONNX Runtime fp32, 1 thread (edgedistil.plan.paired_speedups: rounds alternating "
                              "with the teacher, the median per-round ratio)" if args.measure else None,
                   "rounds": args.rounds if args.measure else 0, "k_head_rows": args.time_k,
                   "load_before": round(load_before, 2)},
        "students": students,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(Path(args.json), result)
    print(json.dumps({name: c["by_k"] for name, c in cover.items()}, indent=1))
    print(json.dumps(students, indent=1))


if __name__ == "__main__":
    main()
