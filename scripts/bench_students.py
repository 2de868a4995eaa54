"""The quality cliff: students of several sizes, two inits and three token budgets, each trained by the distill stage
and scored beside its same-precision decode speedup over the teacher.

    python scripts/bench_students.py                               # 4 sizes x even/auto x 1x/4x/16x steps
    python scripts/bench_students.py --layers 6,11 --budgets 1     # a slice
    python scripts/bench_students.py --config models/tiny.toml --layers 1,2 --budgets 1,2 --eval none
    python scripts/bench_students.py --layers 14 --inits auto --budgets 1 --set data.chat_conversations=1024

For every point: CE ratio (teacher CE / student CE) and top-1 agreement on the run's held-out text, the same on
[data] heldout_corpus, and (with --eval fast) the teacher's benchmark margin kept and chat behaviour from
edgedistil.eval. Speed is measured once per size: fp32 decode tok/s on ONNX Runtime (1 thread, the export stage's
graph) for the student built at that size and for the teacher, in the same process pool (edgedistil.plan).

Each finished point is kept in <cache>/bench-students/ under a key of its recipe, so an interrupted sweep resumes
where it stopped and a wider sweep reuses the narrower one's points. With --keep-students the trained student
stays there too (<key>/student), and --margin-items N scores every kept student on N benchmark items a task (the
fast subset reads the margin with +-30 points of noise; 500 items a task, about +-2 on the mean), once per point.
Writes docs/results/students_<recipe>.json and a plot beside it (students_<recipe>.png): quality kept against
speedup, one line per init and budget. The goal (issue 18): a student at 1.5x or more that keeps CE ratio >= 0.95
and >= 90% of the margin at the largest budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edgedistil.records import machine

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="recipe TOML (default: the built-in default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override the recipe, as edgedistil build --set does (repeatable)")
    ap.add_argument("--layers", default="6,9,11,15", help="student layer counts, comma-separated")
    ap.add_argument("--inits", default="even,auto", help="[student] init values, comma-separated")
    ap.add_argument("--budgets", default="1,4,16", help="multiples of the recipe's steps, comma-separated")
    ap.add_argument("--data-scale", action="store_true",
                    help="teacher-chat: the teacher writes the budget's multiple of the recipe's conversations too, so "
                         "a larger budget trains on new text, not more passes over the same (one-time, cached)")
    ap.add_argument("--eval", choices=["fast", "none"], default="fast",
                    help="benchmarks and chat behaviour per point (fast subset), or held-out text only")
    ap.add_argument("--keep-students", action="store_true",
                    help="keep each newly trained student in <cache>/bench-students/<key>/student")
    ap.add_argument("--margin-items", type=int, default=0,
                    help="> 0: the benchmark margin of every kept student on this many items a task (teacher "
                         "figures cached once)")
    ap.add_argument("--cached-only", action="store_true",
                    help="train nothing: write the table of the points already cached, listing the missing ones")
    ap.add_argument("--json", default=None, help="output path")
    args = ap.parse_args()

    from edgedistil.build import Run, recipe_with
    from edgedistil.config import load_recipe, parse_set
    from edgedistil.sources.cache import cache_dir

    recipe = load_recipe(args.config, args.overrides)
    if ("student", "head_rows") not in {parse_set(o)[:2] for o in args.overrides}:
        # the cliff compares students' shapes, each timed with the whole head as its points so far were
        recipe = recipe_with(recipe, student={**recipe.section("student"), "head_rows": 0})
    name = Path(args.config).stem if args.config else "default"
    dest = Path(args.json) if args.json else REPO / "docs" / "results" / f"students_{name}.json"
    layer_counts = [int(x) for x in args.layers.split(",")]
    inits = args.inits.split(",")
    budgets = [int(x) for x in args.budgets.split(",")]
    points_dir = cache_dir() / "bench-students"
    points_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="edgedistil-bench-students-") as tmp:
        run = Run(out=Path(tmp), recipe=recipe, log=log)
        teacher = run.teacher_dir()
        speeds = measured_speedups(teacher, recipe, layer_counts, log)
        points, missing = [], []
        for k in layer_counts:
            for init in inits:
                for mult in budgets:
                    data = {"chat_conversations": recipe.data.chat_conversations * mult} if args.data_scale else {}
                    r = recipe_with(recipe, student={"layers": k, "init": init}, data=data,
                                    distill={"steps": recipe.distill.steps * mult, "preflight_export": False})
                    corpus = Run(out=Path(tmp), recipe=r, log=log).corpus()
                    key = point_key(teacher, corpus, r, args.eval)
                    path = points_dir / f"{key}.json"
                    if path.is_file():
                        point = json.loads(path.read_text())
                        log(f"students: {k} layers, init {init}, {mult}x: from {path}")
                    elif args.cached_only:
                        missing.append({"layers": k, "init": init, "budget": mult})
                        log(f"students: {k} layers, init {init}, {mult}x: not trained yet (--cached-only)")
                        continue
                    else:
                        point = train_point(teacher, corpus, r, Path(tmp) / key, args.eval, log)
                        point.update(layers=k, init=init, budget=mult)
                        if args.keep_students:
                            shutil.move(str(Path(tmp) / key / "distill" / "student"), points_dir / key / "student")
                        path.write_text(json.dumps(point, indent=2) + "\n")
                    kept = points_dir / key / "student"
                    label = f"margin_{args.margin_items}"
                    if args.margin_items and label not in point and kept.is_dir():
                        point[label] = benchmark_margin(kept, teacher, args.margin_items, log)
                        path.write_text(json.dumps(point, indent=2) + "\n")
                    point["speedup_fp32"] = speeds[k]["speedup"]
                    point["budget"] = mult
                    precise = point.get(label) if args.margin_items else None
                    point["margin_read"] = precise["margin_kept_pooled"] if precise else point.get("margin_kept_pooled")
                    point["margin_read_from"] = f"{args.margin_items} items a task" if precise else "fast subset"
                    points.append(point)

    largest = max(budgets)
    meeting = [p for p in points if p["budget"] == largest and p["speedup_fp32"] >= 1.5
               and (p["ce_ratio"] or 0) >= 0.95 and (p.get("margin_read") or 0) >= 0.90]
    result = {
        "recipe": name,
        "command": " ".join(["python scripts/bench_students.py", *sys.argv[1:]]),
        "teacher": str(teacher), "corpus": recipe.data.corpus, "base_steps": recipe.distill.steps,
        "data_scale": args.data_scale, "base_conversations": recipe.data.chat_conversations,
        "tokens_per_step": recipe.distill.batch_size * recipe.data.seq_len,
        "speed": speeds, "points": points, "missing": missing,
        "goal": "at the largest budget, a student at >= 1.5x fp32 decode speed with CE ratio >= 0.95 and >= 90% of "
                "the teacher's benchmark margin (pooled)",
        "goal_met": bool(meeting),
        "machine": machine(load_before),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, dest.with_suffix(".png"))
    for p in points:
        print(f"{p['layers']:>3} layers {p['init']:>5} {p['budget']:>3}x  speedup {p['speedup_fp32']:.2f}  "
              f"CE ratio {p['ce_ratio']:.3f}  top-1 {p['top1']:.3f}  margin kept {fmt(p.get('margin_read'))} "
              f"({p['margin_read_from']})")
    print(f"written to {dest}")


def point_key(teacher: Path, corpus, recipe, eval_mode: str) -> str:
    """A point is its teacher, corpus (its text: teacher-chat's depends on the precision the teacher wrote in),
    student and distill sections, and whether benchmarks were scored."""
    import dataclasses

    text = hashlib.sha256(corpus.text.encode()).hexdigest()[:16]
    spec = {"teacher": str(teacher), "corpus": [corpus.name, text], "data": dataclasses.asdict(recipe.data),
            "student": dataclasses.asdict(recipe.student), "distill": dataclasses.asdict(recipe.distill),
            "eval": eval_mode}
    if recipe.student.init == "auto":  # what "auto" resolves to changes with the measurement behind it
        from edgedistil.distill.prune import AUTO_RANKING

        spec["auto_ranking"] = AUTO_RANKING
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_point(teacher: Path, corpus, recipe, out: Path, eval_mode: str, log) -> dict:
    """One student through the distill stage, then (eval_mode "fast") edgedistil eval beside its teacher."""
    from edgedistil.build import recipe_benchmarks
    from edgedistil.distill.train import run_distill
    from edgedistil.eval.run import run_eval

    t0 = time.perf_counter()
    record = run_distill(teacher, corpus, recipe, out / "distill", log=log)
    q = record["quality"]
    other = q.get("heldout_corpus") or {}
    point = {"steps": recipe.distill.steps, "teacher_layers": record["student"]["teacher_layers"],
             "ce_ratio": q["quality_retained"], "top1": q["top1_agreement_with_teacher"],
             "perplexity": q["student_perplexity"], "teacher_perplexity": q["teacher_perplexity"],
             "heldout_corpus_ce_ratio": other.get("quality_retained"),
             "train_corpus_tokens": record["corpus"]["train_tokens"],
             "train_seconds": record["train_seconds"], "train_tokens_per_s": record["train_tokens_per_s"]}
    if eval_mode == "fast":
        ev = run_eval(out / "distill" / "student", teacher, out / "eval.json", subset=recipe.eval.subset, log=log,
                      benchmarks=recipe_benchmarks(recipe), new_tokens=recipe.eval.new_tokens)
        mean, beh = ev["benchmarks"]["mean"], ev["behaviour"] or {}
        point.update(benchmark_mean=mean.get("student"), teacher_benchmark_mean=mean.get("teacher"),
                     margin_kept=mean.get("margin_kept"), margin_kept_pooled=mean.get("margin_kept_pooled"),
                     degenerate=(beh.get("student") or {}).get("degenerate"),
                     rouge_l_vs_teacher=beh.get("rouge_l_vs_teacher"))
    point["seconds"] = round(time.perf_counter() - t0, 1)
    return point


def benchmark_margin(student: Path, teacher: Path, items: int, log) -> dict:
    """The five tasks at `items` each (benchmarks only, no chat), beside the teacher's cached figures."""
    from edgedistil.eval.run import TASKS, run_eval

    with tempfile.TemporaryDirectory(prefix="edgedistil-margin-") as tmp:
        ev = run_eval(student, teacher, Path(tmp) / "eval.json", subset={t: items for t in TASKS}, log=log,
                      prompts=[])
    mean = ev["benchmarks"]["mean"]
    return {"items_per_task": items, "benchmark_mean": mean.get("student"),
            "teacher_benchmark_mean": mean.get("teacher"), "margin_kept_pooled": mean.get("margin_kept_pooled"),
            "per_task": {t: ev["benchmarks"][t] for t in TASKS}}


def measured_speedups(teacher_dir: Path, recipe, layer_counts: list[int], log) -> dict[int, dict]:
    """fp32 decode speedup over the teacher per layer count, on ONNX Runtime (1 thread; edgedistil plan's timing),
    in three rounds alternating with the teacher (edgedistil.plan.paired_speedups: the median per-round ratio).

    Which layers are kept does not change the cost of a step, so each size is timed once, with even layers.
    """
    from edgedistil.distill.student import build_student
    from edgedistil.model import load_hf_folder
    from edgedistil.plan import paired_speedups

    teacher = load_hf_folder(teacher_dir).float().eval()
    e, s = recipe.export, recipe.student
    students = {k: build_student(teacher, k, "even", intermediate_size=s.intermediate_size, heads=s.heads)[0]
                for k in layer_counts}
    speeds = paired_speedups(teacher, students, e.max_len, e.prefill_len)
    for k, v in speeds.items():
        log(f"students: {k} layers decode at {v['speedup']:.2f}x the teacher (fp32, ONNX Runtime, 1 thread; "
            f"rounds {v['ratios']})")
    return speeds


def fmt(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def plot(result: dict, path: Path) -> None:
    """Quality kept (CE ratio, and pooled margin where measured) against speedup; a line per init and budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_margin = any(p.get("margin_read") is not None for p in result["points"])
    fig, axes = plt.subplots(1, 2 if have_margin else 1, figsize=(11 if have_margin else 6, 4), squeeze=False)
    series = sorted({(p["init"], p["budget"]) for p in result["points"]})
    for ax, key, label in zip(axes[0], ("ce_ratio", "margin_read"),
                              ("CE ratio (teacher CE / student CE)", "teacher's benchmark margin kept (pooled)")):
        for init, budget in series:
            pts = sorted((p["speedup_fp32"], p[key]) for p in result["points"]
                         if p["init"] == init and p["budget"] == budget and p.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"init {init}, {budget}x steps")
        ax.set_xlabel("fp32 decode speedup over the teacher (ONNX Runtime, 1 thread)")
        ax.set_ylabel(label)
        ax.axvline(1.5, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle(f"students of {Path(result['teacher']).name} on {result['corpus']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
