"""Cross-check edgedistil's multiple-choice scorer against lm-evaluation-harness on the same items and model.

    .venv/bin/python scripts/bench_eval_harness.py [--model DIR] [--per-task 100]

Makes its own venv (<edgedistil cache>/lmeval-venv) with lm-eval[hf] 0.4.13, torch 2.13.0 installed first and
pinned by constraints (edgedistil.runtimes.venv: the wheel already on disk, no second torch download), writes the
items edgedistil scores as local jsonl files with one lm-eval task YAML each (`dataset_path: json`, the text,
choices and gold taken verbatim; WinoGrande as lm-eval's partial scoring: one context per choice, one shared
continuation), runs `lm_eval --model hf` on the teacher's HF folder (fp32, CPU, offline, trust_remote_code off)
with per-sample log-likelihoods, scores the same items with edgedistil.eval.score, and writes
docs/results/eval_harness.json: acc / acc_norm of both, the gap in points per task, and the largest difference of
any choice's log-likelihood. Our scorer is accepted on a task only where both gaps are within 0.5 points.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgedistil.errors import write_json  # noqa: E402
from edgedistil.runtimes.venv import TORCH_PIN  # noqa: E402
from edgedistil.sources.cache import cache_dir  # noqa: E402

LM_EVAL = "lm-eval[hf]==0.4.13"
PINS = ["transformers==5.23.0"]  # the project's own version (torch is pinned by pinned_venv): pip reuses the disk
TOLERANCE = 0.5  # points


def harness_venv(log=print) -> Path:
    from edgedistil.runtimes.venv import pinned_venv

    return pinned_venv("lmeval-venv", [LM_EVAL, *PINS], log)


def write_tasks(items: dict[str, list], folder: Path) -> list[str]:
    """One jsonl and one lm-eval task YAML per benchmark; returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, its in items.items():
        data = folder / f"{name}.jsonl"
        partial = isinstance(its[0]["context"], list)
        with open(data, "w", encoding="utf-8") as f:
            for it in its:
                row = dict(it, continuation=it["choices"][0]) if partial else it
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        task = f"edgedistil_{name}"
        # feature names, not templates: lm-eval then takes each field verbatim (no Jinja whitespace handling)
        fields = ("doc_to_text: gold\ndoc_to_choice: context\ndoc_to_target: continuation\n" if partial else
                  "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: gold\n")
        (folder / f"{task}.yaml").write_text(
            f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\noutput_type: multiple_choice\n{fields}"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
        names.append(task)
    return names


def run_lm_eval(venv: Path, model: Path, tasks: list[str], folder: Path, threads: int, log=print) -> dict:
    out = folder / "lm-eval-out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(folder / "hf-datasets-cache"), "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(venv / "bin" / "lm_eval"), "--model", "hf", "--model_args",
           f"pretrained={model},dtype=float32,trust_remote_code=False", "--tasks", ",".join(tasks),
           "--include_path", str(folder), "--device", "cpu", "--batch_size", "16", "--num_fewshot", "0",
           "--output_path", str(out), "--log_samples"]
    log(" ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - t0
    results = json.loads(Path(sorted(glob.glob(str(out / "**" / "results_*.json"), recursive=True))[-1]).read_text())
    samples = {}
    for task in tasks:
        path = sorted(glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True))[-1]
        rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
        samples[task] = {r["doc_id"]: [float(resp[0][0]) for resp in r["resps"]] for r in rows}
    return {"results": results["results"], "samples": samples, "seconds": seconds,
            "versions": {"lm_eval": LM_EVAL, **dict(p.split("==") for p in [TORCH_PIN, *PINS])}}


def main() -> None:
    import torch

    from edgedistil.distill.data import load_tokenizer
    from edgedistil.eval.run import load_task_items
    from edgedistil.eval.score import pick, score_items
    from edgedistil.eval.tasks import TASKS
    from edgedistil.model import load_hf_folder

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=cache_dir() / "teachers" / "smollm2-135m-instruct")
    ap.add_argument("--per-task", type=int, default=100, help="items per task, evenly spaced over each set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "eval_harness.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    items = load_task_items({name: args.per_task for name in TASKS})
    folder = cache_dir() / "eval" / f"harness-{args.per_task}"
    tasks = write_tasks(items, folder)
    lm = run_lm_eval(harness_venv(), args.model, tasks, folder, args.threads)

    model, tok = load_hf_folder(args.model), load_tokenizer(args.model)
    rows = {}
    t0 = time.perf_counter()
    for name, task in zip(items, tasks):
        ours = score_items(model, tok, items[name])
        theirs = lm["results"][task]
        lls = lm["samples"][task]
        diffs = [abs(a - b) for i, ll in enumerate(ours["loglikelihoods"]) for a, b in zip(ll, lls[i])]
        picks_differ = sum(pick(ll, it["choices"]) != pick(lls[i], it["choices"])
                           for i, (ll, it) in enumerate(zip(ours["loglikelihoods"], items[name])))
        metrics = ["acc"] if name == "winogrande" else ["acc", "acc_norm"]  # partial scoring: acc only
        gap = {m: round(ours[m] - 100 * theirs[f"{m},none"], 2) + 0.0 for m in metrics}  # + 0.0: no -0.0
        rows[name] = {
            "n": ours["n"],
            "lm_eval": {m: round(100 * theirs[f"{m},none"], 2) for m in metrics},
            "ours": {m: round(ours[m], 2) for m in metrics},
            "gap_points": gap,
            "within_tolerance": all(abs(g) <= TOLERANCE for g in gap.values()),
            "max_abs_loglikelihood_diff": max(diffs),
            "items_whose_picks_differ": picks_differ,
        }
        print(name, rows[name], flush=True)
    ours_seconds = time.perf_counter() - t0
    write_json(args.out, {
        "what": "edgedistil.eval.score vs lm-evaluation-harness on the same items, same model folder, fp32, CPU",
        "model": str(args.model),
        "items": f"{args.per_task} per task, evenly spaced over each full set (edgedistil.eval.tasks.spread)",
        "tolerance_points": TOLERANCE,
        "lm_eval": {"versions": lm["versions"], "seconds": round(lm["seconds"], 1),
                    "command": "lm_eval --model hf --model_args pretrained=MODEL,dtype=float32 --tasks "
                               "edgedistil_<task> --include_path DIR --batch_size 16 --num_fewshot 0 --log_samples"},
        "ours_seconds": round(ours_seconds, 1),
        "tasks": rows,
        "accepted": [n for n, r in rows.items() if r["within_tolerance"]],
        "not_accepted": [n for n, r in rows.items() if not r["within_tolerance"]],
        "command": f"python scripts/bench_eval_harness.py --per-task {args.per_task}",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
