"""KD against CE-only: the same student init, data, steps and seed, trained once with the teacher's soft labels and
once on the real next token alone; held-out perplexity of both, and training tokens/s of each step kind.

    python scripts/bench_distill.py                          # the embedded default (models/default.toml)
    python scripts/bench_distill.py --config models/tiny.toml --steps 30
    python scripts/bench_distill.py --steps 300 --json /tmp/kd.json
    python scripts/bench_distill.py --kd temperature=1 --kd alpha=0.5,temperature=1   # more KD settings beside
    python scripts/bench_distill.py --eval fast --kd data.seq_len=256,batch_size=1   # another section's key too
    python scripts/bench_distill.py --config docs/results/configs/kjv_14l.toml --kd teacher_correction_steps=100

Each `--kd` adds a KD run with those [distill] settings changed, so settings can be compared on the same init,
data and steps (the first KD run always uses the recipe's own settings). One exception: with
`teacher_correction_steps`, the student is built from the corrected teacher (its kept layers are the recipe's if
`[student] init` lists them, but its weights and its measured FFN neurons are the corrected teacher's).

Both runs go through the distill stage itself (edgedistil.distill.train.run_distill); the CE-only run is the
same recipe with alpha = 0 and no on-policy steps (the stage then skips the teacher's forward, so its tokens/s
is a plain CE step).
Writes docs/results/distill_<recipe>.json (or --json PATH). The goal: KD >= 10% lower perplexity, in-domain and
on [data] heldout_corpus (never trained on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from edgedistil.records import machine

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="recipe TOML (default: the built-in default)")
    ap.add_argument("--steps", type=int, default=None, help="training steps for both runs (default: the recipe's)")
    ap.add_argument("--json", default=None, help="output path")
    ap.add_argument("--kd", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="an extra KD run with these [distill] settings (alpha, temperature, loss, lr, ...)")
    ap.add_argument("--eval", default="none", choices=("none", "fast", "full"),
                    help="also score each student with `edgedistil eval` on this subset (benchmarks + chat)")
    args = ap.parse_args()

    from edgedistil.build import Run, recipe_benchmarks, recipe_with
    from edgedistil.config import load_recipe
    from edgedistil.distill.train import run_distill
    from edgedistil.eval.run import run_eval, summary

    recipe = load_recipe(args.config)
    if args.steps:
        recipe = recipe_with(recipe, distill={"steps": args.steps})
    name = Path(args.config).stem if args.config else "default"
    dest = Path(args.json) if args.json else REPO / "docs" / "results" / f"distill_{name}.json"
    load_before = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="edgedistil-bench-distill-") as tmp:
        run = Run(out=Path(tmp), recipe=recipe, log=lambda m: print(m, file=sys.stderr))
        teacher, corpus = run.teacher_dir(), run.corpus()
        plans = [("kd", {}), ("ce_only", {"alpha": 0.0, "on_policy": 0.0})] + [(f"kd[{s}]", parse_settings(s)) for s in args.kd]
        for label, settings in plans:
            # "data.seq_len=256" changes another section (the corpus stays the recipe's); a bare key is [distill]'s
            other = {}
            for key in [k for k in settings if "." in k]:
                section, field = key.split(".", 1)
                other.setdefault(section, {})[field] = settings.pop(key)
            r = recipe_with(recipe, **other, distill={**settings, "preflight_export": False})
            t0 = time.perf_counter()
            record = run_distill(teacher, corpus, r, Path(tmp) / label, log=run.log)
            runs[label] = {"alpha": r.distill.alpha, "temperature": r.distill.temperature, "loss": r.distill.loss,
                           "settings": {**settings, **{f"{sec}.{k}": v for sec, kv in other.items()
                                                       for k, v in kv.items()}},
                           "wall_seconds": round(time.perf_counter() - t0, 1),
                           "train_seconds": record["train_seconds"],
                           "train_tokens_per_s": record["train_tokens_per_s"],
                           "final_loss": record["final_loss"], "quality": record["quality"], "head": record["head"],
                           "teacher_correction": record["teacher_correction"]}
            if args.eval != "none":
                student = Path(tmp) / label / "student"
                # held-out figures on the eval's own fixed windows, the same for every run whatever its seq_len
                heldout = (Path(tmp) / label / "heldout.txt").read_text(encoding="utf-8")
                scored = run_eval(student, teacher, Path(tmp) / f"{label}-eval.json", subset=args.eval,
                                  log=run.log, heldout_text=heldout, benchmarks=recipe_benchmarks(recipe),
                                  new_tokens=recipe.eval.new_tokens)
                runs[label]["eval"] = summary(scored)
    kd, ce = runs["kd"]["quality"], runs["ce_only"]["quality"]
    gain = 1 - kd["student_perplexity"] / ce["student_perplexity"]
    # the same comparison on [data] heldout_corpus, which neither run trains on
    other = None
    if kd.get("heldout_corpus") and ce.get("heldout_corpus"):
        other = round(1 - kd["heldout_corpus"]["student_perplexity"] / ce["heldout_corpus"]["student_perplexity"], 4)
    gains = {label: round(1 - r["quality"]["student_perplexity"] / ce["student_perplexity"], 4)
             for label, r in runs.items() if label != "ce_only"}
    # benchmark means and pooled margin kept, KD minus CE-only (positive: KD scores higher)
    scores = None
    if args.eval != "none":
        def mean(label, key):
            return runs[label]["eval"]["benchmarks"]["mean"].get(key)

        scores = {label: {key: mean(label, key) for key in ("student", "margin_kept_pooled")}
                  | {"degenerate": runs[label]["eval"]["behaviour"]["student"].get("degenerate"),
                     "ended_turn": runs[label]["eval"]["behaviour"]["student"].get("ends_with_end_of_turn"),
                     "rouge_l_vs_teacher": runs[label]["eval"]["behaviour"].get("rouge_l_vs_teacher"),
                     "heldout_quality_retained": runs[label]["eval"]["heldout"].get("quality_retained"),
                     "heldout_top1": runs[label]["eval"]["heldout"].get("top1_agreement_with_teacher")}
                  for label in runs}
    result = {
        "recipe": name,
        "command": "python scripts/bench_distill.py" + "".join(
            f" {k} {v}" for k, v in (("--config", args.config), ("--steps", args.steps)) if v)
            + (f" --eval {args.eval}" if args.eval != "none" else "")
            + "".join(f" --kd {s}" for s in args.kd),
        "teacher": str(teacher),
        "corpus": corpus.name,
        "student_layers": recipe.student.layers,
        "steps": recipe.distill.steps, "batch_size": recipe.distill.batch_size, "seq_len": recipe.data.seq_len,
        "temperature": recipe.distill.temperature, "loss": recipe.distill.loss,
        "runs": runs,
        "teacher_perplexity": kd["teacher_perplexity"],
        "kd_perplexity_reduction_vs_ce": round(gain, 4),
        "kd_perplexity_reduction_vs_ce_heldout_corpus": other,
        "heldout_corpus": kd.get("heldout_corpus", {}).get("corpus"),
        "perplexity_reduction_vs_ce_per_run": gains,
        "scores": scores,
        "goal": "KD perplexity at least 10% below CE-only, in-domain and on the held-out corpus, and higher "
                "benchmark scores",
        "goal_met": gain >= 0.10 and (other is None or other >= 0.10) and (
            scores is None or (scores["kd"]["student"] or 0) > (scores["ce_only"]["student"] or 0)),
        "kd_step_slowdown_vs_ce": round(runs["ce_only"]["train_tokens_per_s"] / runs["kd"]["train_tokens_per_s"], 2),
        "machine": machine(load_before),
        "note": "CPU shared with other jobs: tokens/s are noisy; perplexities are deterministic for a seed",
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("kd_perplexity_reduction_vs_ce",
                                             "kd_perplexity_reduction_vs_ce_heldout_corpus", "goal_met",
                                             "kd_step_slowdown_vs_ce")}, indent=2))
    print(f"KD ppl {kd['student_perplexity']:.2f} vs CE-only {ce['student_perplexity']:.2f} "
          f"(teacher {kd['teacher_perplexity']:.2f}); written to {dest}")


def parse_settings(text: str) -> dict:
    """"alpha=0.5,temperature=1" -> {"alpha": 0.5, "temperature": 1.0}; numbers become floats (ints for steps), true/false bools."""
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if value.strip().lower() in ("true", "false"):
            out[key.strip()] = value.strip().lower() == "true"
            continue
        try:
            out[key.strip()] = int(value) if key.strip().split(".")[-1] in (
                "steps", "batch_size", "warmup_steps", "teacher_topk", "seq_len", "chat_conversations",
                "chat_answer_tokens", "teacher_correction_steps") else float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


if __name__ == "__main__":
    main()
