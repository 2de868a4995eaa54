"""The chain: distill -> export (student, teacher) -> quantize -> bench -> convert -> check, in one run folder.

Each stage writes its own folder under the run folder with its artifacts and `record.json`; `stages/<stage>.json`
keeps the hash of its inputs and config, and its record. A stage whose hash is unchanged is reused, so a rerun after a failure or a
config change redoes only what changed. The single-stage CLI verbs call the same functions.

Run folder layout:
    distill/            student/ (HF folder), train.jsonl, eval.json, heldout.txt, record.json
    export/student/     model.onnx, verify.json, record.json
    export/teacher/     model.onnx, verify.json, record.json
    quantize/<method>/  model.onnx, verify.json, record.json (the target profile's method: web int8_storage)
    bench/              record.json
    bench-web/          record.json (web: the bundle in headless Chromium)
    coreml/<variant>/   model.mlpackage (ios), record.json
    litert/student/     <variant>/model.tflite (android), record.json
    litert/teacher/     the teacher in the bundle's variant, for the side-by-side bench
    bench-android/      record.json (android: host LiteRT at 1, 2, 4 threads)
    dist/<target>/      the bundle
    stages/             one JSON per finished stage: input hash, seconds, record
    check.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgedistil.config import Recipe, load_budget_file, load_target
from edgedistil.errors import EdgeError, atomic_dir, read_json, write_json
from edgedistil.records import folder_fingerprint, sha256_file, stage_key


# The chain's stage names in order; `--force NAME` reruns NAME and every stage after it.
CHAIN = ("distill", "export", "quantize", "bench", "convert")


@dataclass
class Run:
    out: Path
    recipe: Recipe
    teacher_override: str | None = None
    data_override: str | None = None
    log: Callable[[str], None] = print
    force_from: str | None = None  # a CHAIN name
    min_ios: int | None = None  # --min-ios: overrides the ios profile's min_ios
    stages: list[dict] = field(default_factory=list)
    _teacher: Path | None = None
    _corpus: object = None

    # ---- inputs -------------------------------------------------------------------------------------------
    def teacher_dir(self) -> Path:
        if self._teacher is None:
            self._teacher = resolve_teacher(self.teacher_override or self.recipe.teacher.source, self)
        return self._teacher

    def corpus(self):
        from edgedistil.sources import load_corpus

        if self._corpus is None:
            self._corpus = load_corpus(self.data_override or self.recipe.data.corpus, log=self.log)
        return self._corpus

    def heldout_ids(self) -> np.ndarray:
        from edgedistil.distill.data import load_tokenizer, tokenize

        path = self.out / "distill" / "heldout.txt"
        if not path.is_file():
            raise EdgeError(f"{path} does not exist", f"run `edgedistil distill --out {self.out}` first")
        # enough held-out text for fidelity and bench prompts; tokenizing all of it would only cost time
        return tokenize(load_tokenizer(self.out / "distill" / "student"), path.read_text(encoding="utf-8")[:50_000])

    # ---- caching ------------------------------------------------------------------------------------------
    def state_path(self, name: str) -> Path:
        # kept outside the stage folder, so a bundle holds only what its manifest lists
        return self.out / "stages" / f"{name.replace('[', '-').replace(']', '')}.json"

    def key_of(self, name: str) -> str | None:
        path = self.state_path(name)
        return read_json(path).get("key") if path.is_file() else None

    def stage(self, name: str, folder: Path, key: str, fn: Callable[[], dict], force: bool = False) -> dict:
        """Run `fn` (which writes `folder`) unless a finished run with the same key left `folder` behind."""
        state = self.state_path(name)
        base = name.split("[")[0]
        if self.force_from and base in CHAIN and CHAIN.index(base) >= CHAIN.index(self.force_from):
            force = True
        if not force and folder.is_dir() and state.is_file():
            saved = read_json(state)
            if saved.get("key") == key:
                self.stages.append({"stage": name, "status": "cached", "seconds": 0.0})
                self.log(f"[{name}] cached ({folder})")
                return saved["record"]
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        try:
            record = fn()
        except BaseException:
            self.stages.append({"stage": name, "status": "failed", "seconds": round(time.perf_counter() - t0, 1)})
            raise
        seconds = round(time.perf_counter() - t0, 1)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes
            write_json(state, {"stage": name, "key": key, "seconds": seconds, "record": record})
        self.stages.append({"stage": name, "status": "run", "seconds": seconds})
        return record


@contextlib.contextmanager
def build_lock(out: Path):
    """Refuse a second build into the same run folder while one is running (an advisory lock, freed on exit)."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown pid"
        f.close()
        raise EdgeError(f"another edgedistil build is running in {out} ({holder})",
                        "wait for it to finish, or pass another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    # we hold the lock, so temp folders left here are from a run that was killed (SIGKILL skips their cleanup)
    for stale in sorted(out.rglob(".*.tmp"), reverse=True):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def resolve_teacher(source: str, run: Run) -> Path:
    from edgedistil.sources import EMBEDDED_TEACHER, embedded_teacher, tiny_teacher

    if source == EMBEDDED_TEACHER:
        return embedded_teacher(log=run.log)
    if source == "tiny":
        from edgedistil.sources import load_corpus

        folder = run.out / "teacher-tiny"
        if not (folder / "config.json").is_file():  # its tokenizer is trained on the tiny corpus, whatever --data says
            tiny_teacher(folder, load_corpus("tiny").text, seed=run.recipe.distill.seed)
        return folder
    path = Path(source).expanduser()
    if not path.is_dir():
        raise EdgeError(f"teacher path {path} does not exist",
                        f"pass --teacher PATH to an HF model folder (config.json + *.safetensors + tokenizer.json), "
                        f"or use the embedded default '{EMBEDDED_TEACHER}'")
    from edgedistil.model import read_hf_config

    read_hf_config(path)  # refuses unsupported architectures before any work starts
    return path


# ---- stages ----------------------------------------------------------------------------------------------------


def do_distill(run: Run, force: bool = False, resume: bool = False) -> dict:
    from edgedistil.distill.train import run_distill, run_key

    r = run.recipe
    teacher, corpus = run.teacher_dir(), run.corpus()
    key = run_key(teacher, corpus, r)  # the same identity a checkpoint is resumed against
    return run.stage("distill", run.out / "distill", key,
                     lambda: run_distill(teacher, corpus, r, run.out / "distill", log=run.log, resume=resume), force)


def do_export(run: Run, role: str, model_dir: Path | None = None, force: bool = False) -> dict:
    from edgedistil.export.onnx import run_export

    e = run.recipe.export
    if model_dir is None:
        model_dir = run.out / "distill" / "student" if role == "student" else run.teacher_dir()
    if not (Path(model_dir) / "config.json").is_file():
        raise EdgeError(f"model folder {model_dir} has no config.json",
                        "run `edgedistil distill` first, or pass --model PATH to an HF model folder")
    folder = run.out / "export" / role
    key = stage_key("export", role, run.recipe.section("export"), folder_fingerprint(Path(model_dir)))
    return run.stage(f"export[{role}]", folder, key, lambda: run_export(
        Path(model_dir), folder, run.heldout_ids(), e.max_len, e.prefill_len, role, log=run.log, cache=e.cache), force)


def do_quantize(run: Run, method: str = "int8", src: Path | None = None, force: bool = False) -> dict:
    from edgedistil.quantize.onnx import run_quantize

    src = Path(src) if src else run.out / "export" / "student" / "model.onnx"
    export_record = read_json(src.parent / "record.json", "export record")
    model_dir = Path(export_record["source"]["model_dir"])
    folder = run.out / "quantize" / method
    q = run.recipe.quantize
    keep_float = None if q.keep_float == ["auto"] else q.keep_float  # None: the method's measured default
    key = stage_key("quantize", method, sha256_file(src), run.recipe.export.prefill_len, run.recipe.section("quantize"))
    return run.stage(f"quantize[{method}]", folder, key, lambda: run_quantize(
        src, model_dir, folder, run.heldout_ids(), run.recipe.export.prefill_len, method, log=run.log,
        block_size=q.block_size, keep_float=keep_float, rounding=q.rounding,
        eight_bit=None if q.int4_eight_bit == ["auto"] else tuple(q.int4_eight_bit)), force)


def bench_prompt(run: Run) -> list[int]:
    """One prefill chunk of held-out text: the same prompt for every model benchmarked."""
    return run.heldout_ids()[: run.recipe.export.prefill_len].tolist()


def do_bench(run: Run, models: dict[str, Path], threads: int, force: bool = False) -> dict:
    from edgedistil.bench.ort import run_bench

    b = run.recipe.bench
    key = stage_key("bench", {k: sha256_file(v) for k, v in models.items()}, run.recipe.section("bench"), threads)
    folder = run.out / "bench"

    def bench() -> dict:
        record = run_bench(models, bench_prompt(run), run.recipe.export.prefill_len, b.new_tokens, b.repeats, threads,
                           log=run.log)
        with atomic_dir(folder) as tmp:
            write_json(tmp / "record.json", record)
        return record

    return run.stage("bench", folder, key, bench, force)


def web_method() -> str:
    """The quantize method the web bundle ships: the web profile's `quantization`."""
    return load_target("web").quantization


def convert_records(run: Run) -> dict:
    """The records a bundle's manifest is made from; the benches only when they ran."""
    records = {
        "distill": read_json(run.out / "distill" / "record.json", "distill record"),
        "export": read_json(run.out / "export" / "student" / "record.json", "export record"),
        "quantize": read_json(run.out / "quantize" / web_method() / "record.json", "quantize record"),
        "recipe_name": run.recipe.name,
    }
    for name, folder in (("bench", "bench"), ("bench_web", "bench-web")):
        path = run.out / folder / "record.json"
        if path.is_file():
            records[name] = read_json(path, f"{name} record")
    return records


def do_bench_web(run: Run, threads: int, force: bool = False) -> dict:
    """The bundle's own page and JS module in headless Chromium (student, and the fp32 teacher when it fits)."""
    from edgedistil.bench.web import run_bench_web

    b = run.recipe.bench
    method = web_method()
    student, teacher = run.out / "quantize" / method / "model.onnx", run.out / "export" / "teacher" / "model.onnx"
    key = stage_key("bench-web", sha256_file(student), sha256_file(teacher), run.recipe.section("bench"), threads,
                    [run.key_of(n) for n in ("distill", "export[student]", f"quantize[{method}]", "bench")])
    folder = run.out / "bench-web"
    return run.stage("bench[web]", folder, key, lambda: run_bench_web(
        convert_records(run), student, run.out / "distill" / "student", teacher, folder, bench_prompt(run),
        b.new_tokens, b.repeats, threads, log=run.log), force)


def do_convert(run: Run, target: str, force: bool = False) -> dict:
    from edgedistil.convert.web import run_convert_web

    load_target(target)  # an unknown target fails here
    if target == "ios":
        return do_convert_ios(run, force)
    if target == "android":
        return do_convert_android(run, force)
    records = convert_records(run)
    folder, method = run.out / "dist" / target, web_method()
    key = stage_key("convert", target, [run.key_of(n) for n in ("distill", "export[student]", f"quantize[{method}]",
                                                                  "bench", "bench[web]")])
    return run.stage(f"convert[{target}]", folder, key, lambda: dict(run_convert_web(
        run.out / "quantize" / method / "model.onnx", run.out / "distill" / "student", folder, records,
        log=run.log)), force)


def do_convert_ios(run: Run, force: bool = False) -> dict:
    """Core ML variants of the PyTorch student, each checked on Linux (coreml/), then the bundle (dist/ios/)."""
    from edgedistil.convert.ios import IosOptions, run_coreml, run_convert_ios

    profile, e = load_target("ios"), run.recipe.export
    options = IosOptions(min_ios=run.min_ios or profile.min_ios, bundle_variant=profile.quantization,
                         compute=profile.compute, prefill_len=e.prefill_len, max_len=e.max_len).check()
    student, coreml_dir, folder = run.out / "distill" / "student", run.out / "coreml", run.out / "dist" / "ios"
    if not (student / "config.json").is_file():
        raise EdgeError(f"{student} has no config.json", f"run `edgedistil distill --out {run.out}` first")
    key = stage_key("coreml", options.stage_config(), run.key_of("distill"))
    coreml = run.stage("convert[coreml]", coreml_dir, key, lambda: run_coreml(
        student, coreml_dir, run.heldout_ids(), options, log=run.log), force)
    records = {"coreml": coreml, "distill": read_json(run.out / "distill" / "record.json", "distill record"),
               "recipe_name": run.recipe.name}
    key = stage_key("convert", "ios", run.key_of("convert[coreml]"), run.key_of("distill"), options.bundle_variant)
    return run.stage("convert[ios]", folder, key, lambda: run_convert_ios(
        coreml_dir, student, folder, records, options.bundle_variant, log=run.log), force)


def android_options(run: Run, **changes):
    from edgedistil.convert.android import AndroidOptions

    e = run.recipe.export
    return AndroidOptions(bundle_variant=load_target("android").quantization, prefill_len=e.prefill_len,
                          max_len=e.max_len, **changes).check()


def do_litert(run: Run, role: str, force: bool = False) -> dict:
    """LiteRT variants of the student (all of them, each checked), or of the teacher (the bundle's variant only,
    for the side-by-side bench)."""
    from edgedistil.convert.android import run_litert

    if role == "student":
        options, model_dir, upstream = android_options(run), run.out / "distill" / "student", run.key_of("distill")
        if not (model_dir / "config.json").is_file():
            raise EdgeError(f"{model_dir} has no config.json", f"run `edgedistil distill --out {run.out}` first")
    else:
        options = android_options(run, fidelity_segments=2, greedy_tokens=32)
        options = dataclasses.replace(options, variants=(options.bundle_variant,))
        model_dir = run.teacher_dir()
        upstream = folder_fingerprint(model_dir)
    folder = run.out / "litert" / role
    key = stage_key("litert", role, options.stage_config(), upstream)
    return run.stage(f"convert[litert-{role}]", folder, key, lambda: run_litert(
        model_dir, folder, run.heldout_ids(), options, role=role, log=run.log), force)


def do_bench_android(run: Run, force: bool = False) -> dict:
    """Host LiteRT at 1, 2 and 4 threads: the student's bundle variant beside the teacher in the same variant."""
    from edgedistil.bench.litert import run_bench_android

    profile, b = load_target("android"), run.recipe.bench
    variant = profile.quantization
    models = {"student": run.out / "litert" / "student" / variant / "model.tflite",
              "teacher": run.out / "litert" / "teacher" / variant / "model.tflite"}
    if not models["student"].is_file():
        raise EdgeError(f"{models['student']} does not exist", f"run `edgedistil build --target android --out {run.out}`")
    if not models["teacher"].is_file():  # the teacher did not convert (too big for this machine): student alone
        del models["teacher"]
    folder = run.out / "bench-android"
    key = stage_key("bench-android", {k: sha256_file(v) for k, v in models.items()}, run.recipe.section("bench"),
                    profile.threads)

    def bench() -> dict:
        record = run_bench_android(models, bench_prompt(run), b.new_tokens, b.repeats, profile.threads, log=run.log)
        with atomic_dir(folder) as tmp:
            write_json(tmp / "record.json", record)
        return record

    return run.stage("bench[android]", folder, key, bench, force)


def do_convert_android(run: Run, force: bool = False) -> dict:
    """LiteRT variants of the student (litert/student), then dist/android/. Without a bench record (the single
    `convert` verb on a fresh run) the bundle says so."""
    do_litert(run, "student", force)
    return do_bundle_android(run, force)


def do_bundle_android(run: Run, force: bool = False) -> dict:
    """dist/android/ from the litert stage's shipped variant and the records (the host bench when it ran)."""
    from edgedistil.convert.android import run_convert_android

    variant = load_target("android").quantization
    records = {"litert": read_json(run.out / "litert" / "student" / "record.json", "litert record"),
               "distill": read_json(run.out / "distill" / "record.json", "distill record"),
               "recipe_name": run.recipe.name}
    bench = run.out / "bench-android" / "record.json"
    if bench.is_file():
        records["bench_android"] = read_json(bench, "android bench record")
    folder = run.out / "dist" / "android"
    key = stage_key("convert", "android", variant, [run.key_of(n) for n in (
        "distill", "convert[litert-student]", "bench[android]")])
    return run.stage("convert[android]", folder, key, lambda: run_convert_android(
        run.out / "litert" / "student", run.out / "distill" / "student", folder, records, variant, log=run.log),
        force)


def build(run: Run, target: str, budgets_file: Path | None = None) -> tuple[list[dict], dict, dict | None]:
    """The whole chain for `target`. Returns the check rows, the bundle manifest and the target profile's device
    estimate (None without a device)."""
    from edgedistil.check.budgets import evaluate
    from edgedistil.check.devices import load_device, project

    profile = load_target(target)
    if target == "android":
        android_options(run)  # a profile naming an unknown variant fails now, not after distillation
    budgets = load_budget_file(budgets_file) if budgets_file else profile.budgets
    if run.recipe.export.max_len > profile.max_len:
        raise EdgeError(f"[export] max_len {run.recipe.export.max_len} exceeds the {target} profile's max_len "
                        f"{profile.max_len}", f"lower max_len in the recipe or raise it in {profile.path}")
    if target == "web" and run.recipe.export.cache != "full":
        # the bundle's JS and manifest speak the whole-cache I/O; the gqa layout is for ONNX Runtime hosts
        raise EdgeError(f"[export] cache = \"{run.recipe.export.cache}\" is not the web bundle's cache layout",
                        "use cache = \"full\" for --target web (gqa is for native ONNX Runtime)")
    do_distill(run)
    if target == "ios":  # Core ML converts the PyTorch student itself: no ONNX export, quantize or ONNX bench
        manifest = do_convert_ios(run)
    elif target == "android":  # so does LiteRT (litert-torch)
        do_litert(run, "student")
        try:
            do_litert(run, "teacher")
        except EdgeError as e:  # a teacher too big to convert here must not stop the student's bundle
            run.log(f"convert[litert-teacher]: not converted, the bench runs the student alone: {e.line()}")
        do_bench_android(run)
        manifest = do_bundle_android(run)
    else:
        do_export(run, "student")
        do_export(run, "teacher")
        do_quantize(run, profile.quantization)
        do_bench(run, {"student": run.out / "quantize" / profile.quantization / "model.onnx",
                       "teacher": run.out / "export" / "teacher" / "model.onnx"}, profile.threads)
        if target == "web":
            do_bench_web(run, profile.threads)
        manifest = do_convert(run, target)
    estimate = project(manifest, load_device(profile.device)) if profile.device else None
    rows = evaluate(manifest, budgets, estimate=estimate)
    write_json(run.out / "check.json", {"bundle": str(run.out / "dist" / target), "budgets": rows,
                                        "passed": all(r["status"] == "pass" for r in rows), "estimate": estimate})
    return rows, manifest, estimate


def recipe_with(recipe: Recipe, **section_overrides) -> Recipe:
    """A copy of `recipe` with some fields of its sections replaced, e.g. recipe_with(r, distill={"steps": 2})."""
    changes = {name: dataclasses.replace(getattr(recipe, name), **values) for name, values in section_overrides.items()}
    return dataclasses.replace(recipe, **changes)
