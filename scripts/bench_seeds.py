"""How far one training run can be trusted: the recipe distilled once per seed, each student scored by the eval
stage, and the spread of every figure across seeds.

    python scripts/bench_seeds.py                                  # the embedded default, seeds 0, 1, 2
    python scripts/bench_seeds.py --seeds 0,1 --config models/tiny.toml --eval none

The seed sets the data order (and so the teacher-logits cache's draws) and everything random in training; the
student's init, the corpus and its held-out split stay the recipe's. Most comparisons in docs/benchmarks.md and
docs/quality.md are one run each: a difference between two settings smaller than the spread here is not one.
Writes docs/results/seeds_<recipe>.json (or --json PATH). Run it on idle cores.
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

from edgedistil.records import machine

REPO = Path(__file__).resolve().parent.parent


def figures(record: dict, scored: dict | None) -> dict:
    """The figures a comparison reads, from a distill record and (optionally) its eval summary."""
    q = record["quality"]
    out = {"ce_ratio": q["quality_retained"], "top1": q["top1_agreement_with_teacher"],
           "perplexity": q["student_perplexity"],
           "pydoc_ce_ratio": (q.get("heldout_corpus") or {}).get("quality_retained"),
           "train_tokens_per_s": record["train_tokens_per_s"]}
    if scored:
        b = scored["behaviour"]
        out |= {"benchmark_mean": scored["benchmarks"]["mean"]["student"],
                "margin_kept_pooled": scored["benchmarks"]["mean"]["margin_kept_pooled"],
                "degenerate": round(b["student"]["degenerate"] * b["prompts"]),
                "ended_turn": round(b["student"]["ends_with_end_of_turn"] * b["prompts"]),
                "rouge_l": b["rouge_l_vs_teacher"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="recipe TOML (default: the built-in default)")
    ap.add_argument("--seeds", default="0,1,2", help="[distill] seed values, comma-separated")
    ap.add_argument("--eval", default="fast", choices=("fast", "none"),
                    help="score each student with the eval stage's fast subset (benchmarks + chat), or not")
    ap.add_argument("--json", default=None, help="output path")
    args = ap.parse_args()

    from edgedistil.build import Run, recipe_benchmarks, recipe_with
    from edgedistil.config import load_recipe
    from edgedistil.distill.train import run_distill
    from edgedistil.eval.run import run_eval, summary

    recipe = load_recipe(args.config)
    name = Path(args.config).stem if args.config else "default"
    dest = Path(args.json) if args.json else REPO / "docs" / "results" / f"seeds_{name}.json"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    load_before = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="edgedistil-bench-seeds-") as tmp:
        run = Run(out=Path(tmp), recipe=recipe, log=lambda m: print(m, file=sys.stderr))
        teacher, corpus = run.teacher_dir(), run.corpus()
        for seed in seeds:
            r = recipe_with(recipe, distill={"seed": seed, "preflight_export": False})
            folder = Path(tmp) / f"seed{seed}"
            t0 = time.perf_counter()
            record = run_distill(teacher, corpus, r, folder, log=run.log)
            scored = None
            if args.eval != "none":
                heldout = (folder / "heldout.txt").read_text(encoding="utf-8")
                scored = summary(run_eval(folder / "student", teacher, Path(tmp) / f"seed{seed}-eval.json",
                                          subset=args.eval, log=run.log, heldout_text=heldout,
                                          benchmarks=recipe_benchmarks(recipe), new_tokens=recipe.eval.new_tokens))
            runs[seed] = {**figures(record, scored), "wall_seconds": round(time.perf_counter() - t0, 1)}
    keys = [k for k in runs[seeds[0]] if k != "wall_seconds" and runs[seeds[0]][k] is not None]
    spread = {}
    for k in keys:
        values = [runs[s][k] for s in seeds]
        spread[k] = {"min": min(values), "max": max(values), "range": round(max(values) - min(values), 4),
                     "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else None}
    result = {
        "recipe": name,
        "command": "python scripts/bench_seeds.py" + (f" --config {args.config}" if args.config else "")
                   + f" --seeds {args.seeds}" + (f" --eval {args.eval}" if args.eval != "fast" else ""),
        "seeds": seeds, "steps": recipe.distill.steps, "runs": {str(s): v for s, v in runs.items()},
        "spread": spread,
        "machine": machine(load_before),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in spread.items():
        print(f"{k:>20}: {v['min']:.4g} .. {v['max']:.4g} (stdev {v['stdev']})")
    print(f"written to {dest}")


if __name__ == "__main__":
    main()
