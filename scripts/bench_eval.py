"""Benchmark a student (or the teacher alone) with edgedistil.eval and write docs/results/eval_<name>.json.

    # the teacher alone on large subsets (the protocol in docs/quality.md)
    .venv/bin/python scripts/bench_eval.py --name teacher --per-task 500
    # a student beside its teacher
    .venv/bin/python scripts/bench_eval.py --name default --student edgedistil-run/distill/student --per-task 500
    # the build's fast subset, timed, on an untrained 6-layer cut of the teacher (the default student's shape and
    # starting point: evenly spaced layers, as [student] init = "even")
    .venv/bin/python scripts/bench_eval.py --name fast_cut6 --cut-layers 6 --subset fast --alone
    # the default recipe's student as the distill stage builds it (measured layers and FFN neurons), untrained
    .venv/bin/python scripts/bench_eval.py --name default_init_500 --init-of-recipe default --per-task 500 --no-chat

Runs with torch.set_num_threads(--threads) and writes the wall time of the whole evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgedistil.errors import EdgeError, write_json  # noqa: E402
from edgedistil.sources.cache import cache_dir  # noqa: E402

TEACHER = cache_dir() / "teachers" / "smollm2-135m-instruct"


def cut_of_teacher(teacher: Path, layers: int) -> Path:
    """An untrained student: `layers` evenly spaced teacher layers with its embeddings, norm and head."""
    import torch

    from edgedistil.distill.student import even_layers
    from edgedistil.model import load_hf_folder, save_hf_folder
    from edgedistil.records import folder_fingerprint

    folder = cache_dir() / "eval" / f"cut{layers}-{folder_fingerprint(teacher)[:12]}"
    if (folder / "config.json").is_file():
        return folder
    model = load_hf_folder(teacher)
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in even_layers(len(model.model.layers),
                                                                                          layers))
    return save_hf_folder(model, folder, tokenizer_from=teacher)


def init_of_recipe(config: str) -> Path:
    """The recipe's student as the distill stage builds it, before any training step: its measured layers and FFN
    neurons, ranked on the start of the recipe's training split (edgedistil.distill.train.make_student)."""
    from edgedistil.build import Run
    from edgedistil.config import load_recipe
    from edgedistil.distill.data import load_tokenizer, tokenize
    from edgedistil.distill.train import make_student
    from edgedistil.model import load_hf_folder, save_hf_folder
    from edgedistil.records import folder_fingerprint
    from edgedistil.sources import split_corpus

    recipe = load_recipe(None if config == "default" else config)
    with tempfile.TemporaryDirectory(prefix="edgedistil-init-") as tmp:
        run = Run(out=Path(tmp), recipe=recipe, log=print)
        teacher_dir, corpus = run.teacher_dir(), run.corpus()
    train_text = "\n".join(split_corpus(corpus, recipe.data.heldout_fraction)[0])
    key = hashlib.sha256(json.dumps([folder_fingerprint(teacher_dir), recipe.student.__dict__,
                                     hashlib.sha256(train_text.encode()).hexdigest()],
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = cache_dir() / "eval" / f"init-{key}"
    if (folder / "config.json").is_file():
        return folder
    teacher = load_hf_folder(teacher_dir).eval()
    calib_ids = tokenize(load_tokenizer(teacher_dir), train_text[:200_000])  # as run_distill calibrates
    student, _, _ = make_student(teacher, teacher_dir, recipe, calib_ids, print)
    return save_hf_folder(student, folder, tokenizer_from=teacher_dir)


def main() -> None:
    import torch

    from edgedistil.eval import SUBSETS, run_eval
    from edgedistil.eval.tasks import TASKS

    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True, help="writes docs/results/eval_<name>.json")
    ap.add_argument("--student", type=Path, help="student HF folder (default: the teacher alone)")
    ap.add_argument("--cut-layers", type=int, help="evaluate an untrained cut of the teacher with this many layers")
    ap.add_argument("--init-of-recipe", metavar="TOML|default",
                    help="evaluate the recipe's student as the distill stage builds it, untrained")
    ap.add_argument("--teacher", type=Path, default=TEACHER)
    ap.add_argument("--alone", action="store_true", help="score the model without the teacher beside it: what a "
                    "build pays once the teacher's figures are cached")
    ap.add_argument("--subset", choices=sorted(SUBSETS), help="a named subset (fast = what a build runs)")
    ap.add_argument("--per-task", type=int, help="items per task, evenly spaced over each set")
    ap.add_argument("--tasks", help="comma-separated tasks (default: all five)")
    ap.add_argument("--no-chat", action="store_true", help="benchmarks only, no chat answers")
    ap.add_argument("--heldout", type=Path, help="held-out text for perplexity, top-1 and KL vs the teacher")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.teacher / "config.json").is_file():
        raise SystemExit(f"no teacher at {args.teacher}: run `edgedistil build` once (it converts the embedded "
                         "teacher) or pass --teacher DIR")
    tasks = args.tasks.split(",") if args.tasks else list(TASKS)
    subset = args.subset or {name: args.per_task for name in tasks}
    model = cut_of_teacher(args.teacher, args.cut_layers) if args.cut_layers else \
        init_of_recipe(args.init_of_recipe) if args.init_of_recipe else args.student or args.teacher
    out = REPO / "docs" / "results" / f"eval_{args.name}.json"
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        heldout = args.heldout.read_text(encoding="utf-8") if args.heldout else None
        record = run_eval(model, None if args.alone else args.teacher, out, subset=subset, heldout_text=heldout,
                          prompts=[] if args.no_chat else None)
    except EdgeError as e:
        raise SystemExit(f"error: {e.line()}") from None
    record["bench"] = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                       "threads": args.threads, "wall_seconds": round(time.perf_counter() - t0, 1),
                       # CPU time of this process, all threads: what the run costs apart from the wait for a core
                       "cpu_seconds": round(time.process_time() - cpu0, 1),
                       # the machine is shared: the 1/5/15-minute load average says how contended the timing was
                       "load_average": [round(x, 2) for x in os.getloadavg()],
                       "model_is": "an untrained evenly spaced cut of the teacher" if args.cut_layers else
                       f"the untrained student of recipe {args.init_of_recipe}" if args.init_of_recipe else
                       ("the student" if args.student else "the teacher")}
    write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
