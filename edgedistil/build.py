"""The chain: distill, then a target's stages (each a cached pass), then check, in one run folder.

Each stage writes its own folder under the run folder with its artifacts and `record.json`; `stages/<stage>.json`
keeps the hash of its inputs and config, and its record. A stage whose hash is unchanged is reused, so a rerun after
a failure or a config change redoes only what changed. Which stages a target runs is its module's business
(`edgedistil/targets/<module>.py`, named by its profile); this file holds the engine and the stages targets share:
distill, and the ONNX export, quantize and bench passes. The single-stage CLI verbs run the same stages.

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
import functools
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgedistil.config import Recipe, TargetProfile, load_budget_file, load_target
from edgedistil.errors import EdgeError, atomic_dir, read_json, write_json
from edgedistil.records import folder_fingerprint, sha256_file, stage_key
from edgedistil.targets import Stage, Target, target_of

# The chain's steps in order; a stage's name starts with its step (`convert[ios]`), and `--force NAME` reruns every
# stage of step NAME and of the steps after it.
CHAIN = ("distill", "eval", "export", "quantize", "bench", "convert")


@dataclass
class Run:
    out: Path
    recipe: Recipe
    teacher_override: str | None = None
    data_override: str | None = None
    log: Callable[[str], None] = print
    force_from: str | None = None  # a CHAIN name
    profile_changes: dict = field(default_factory=dict)  # profile fields a CLI flag overrides, e.g. --min-ios
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
        from edgedistil.sources.teacher_chat import chat_settings

        if self._corpus is None:
            self._corpus = load_corpus(self.data_override or self.recipe.data.corpus, log=self.log,
                                       teacher=self.teacher_dir, chat=chat_settings(self.recipe))
        return self._corpus

    def heldout_ids(self) -> np.ndarray:
        from edgedistil.distill.data import load_tokenizer, tokenize

        path = self.out / "distill" / "heldout.txt"
        if not path.is_file():
            raise EdgeError(f"{path} does not exist", f"run `edgedistil distill --out {self.out}` first")
        # enough held-out text for fidelity and bench prompts; tokenizing all of it would only cost time
        return tokenize(load_tokenizer(self.out / "distill" / "student"), path.read_text(encoding="utf-8")[:50_000])

    def profile(self, target: str) -> TargetProfile:
        """The target's profile, with what the command line overrides."""
        return dataclasses.replace(load_target(target), **self.profile_changes)

    # ---- caching ------------------------------------------------------------------------------------------
    def state_path(self, name: str) -> Path:
        # kept outside the stage folder, so a bundle holds only what its manifest lists
        return self.out / "stages" / f"{name.replace('[', '-').replace(']', '')}.json"

    def key_of(self, name: str) -> str | None:
        path = self.state_path(name)
        return read_json(path).get("key") if path.is_file() else None

    def record_of(self, name: str) -> dict:
        """The record a finished stage returned (fresh or cached)."""
        return read_json(self.state_path(name), f"{name} stage record")["record"]

    def stage(self, s: Stage, force: bool = False) -> dict:
        """Run stage `s` unless a finished run with the same key left its folder behind; returns its record."""
        folder, key, state = self.out / s.folder, s.key(self), self.state_path(s.name)
        step = s.name.split("[")[0]
        if self.force_from and step in CHAIN and CHAIN.index(step) >= CHAIN.index(self.force_from):
            force = True
        if not force and folder.is_dir() and state.is_file():
            saved = read_json(state)
            if saved.get("key") == key:
                self.stages.append({"stage": s.name, "status": "cached", "seconds": 0.0})
                self.log(f"[{s.name}] cached ({folder})")
                return saved["record"]
        self.log(f"[{s.name}] running")
        t0 = time.perf_counter()
        try:
            record = s.run(self, folder)
        except BaseException:
            self.stages.append({"stage": s.name, "status": "failed", "seconds": round(time.perf_counter() - t0, 1)})
            raise
        seconds = round(time.perf_counter() - t0, 1)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes
            write_json(state, {"stage": s.name, "key": key, "seconds": seconds, "record": record})
        self.stages.append({"stage": s.name, "status": "run", "seconds": seconds})
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
    return teacher_path(source)


def teacher_path(source: str) -> Path:
    """A teacher given as a path: an HF folder whose architecture EdgeLM supports (read-only: nothing written)."""
    from edgedistil.model import read_hf_config
    from edgedistil.sources import EMBEDDED_TEACHER

    path = Path(source).expanduser()
    if not path.is_dir():
        raise EdgeError(f"teacher path {path} does not exist",
                        f"pass --teacher PATH to an HF model folder (config.json + *.safetensors + tokenizer.json), "
                        f"or use the embedded default '{EMBEDDED_TEACHER}'")
    read_hf_config(path)  # refuses unsupported architectures before any work starts
    return path


def check_out(out: Path) -> None:
    """--out must be a folder, or a path where one can be made: not an existing file, nor below one."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise EdgeError(f"--out {out}: {p} is a file, not a folder", "pass --out a folder path")
            return


def check_target(run: Run, name: str) -> tuple[TargetProfile, Target]:
    """The target's profile and module, refusing a profile that cannot build this recipe."""
    profile = run.profile(name)
    if run.recipe.export.max_len > profile.max_len:
        raise EdgeError(f"[export] max_len {run.recipe.export.max_len} exceeds the {name} profile's max_len "
                        f"{profile.max_len}", f"lower max_len in the recipe or raise it in {profile.path}")
    target = target_of(profile)
    target.check(profile, run.recipe)
    return profile, target


def check_inputs(run: Run, targets: list[str] = (), budgets_file: Path | None = None) -> None:
    """What a build or distill reads, checked before it writes anything: the targets' profiles (and their devices
    and modules) against the recipe, a budgets file, the corpus and a teacher path."""
    from edgedistil.sources import EMBEDDED_TEACHER

    for name in targets:
        check_target(run, name)
    if budgets_file:
        load_budget_file(budgets_file)
    source = run.teacher_override or run.recipe.teacher.source
    if source not in (EMBEDDED_TEACHER, "tiny"):  # only read: checked before teacher-chat runs it for minutes
        from edgedistil.distill.student import check_fits
        from edgedistil.model import read_hf_config

        check_fits(run.recipe.student, read_hf_config(teacher_path(source)))
    run.corpus()  # a missing, empty or non-UTF-8 corpus fails here, before the tiny teacher is written


# ---- the shared stages ---------------------------------------------------------------------------------------


def distill_stage(resume: bool = False) -> Stage:
    def key(run: Run) -> str:
        from edgedistil.distill.train import run_key

        corpus = run.corpus()  # before the teacher: a bad corpus fails before the tiny teacher is written
        return run_key(run.teacher_dir(), corpus, run.recipe)  # the same identity a checkpoint is resumed against

    def go(run: Run, folder: Path) -> dict:
        from edgedistil.distill.train import run_distill

        return run_distill(run.teacher_dir(), run.corpus(), run.recipe, folder, log=run.log, resume=resume)

    return Stage("distill", "distill", key, go)


def recipe_benchmarks(recipe: Recipe) -> dict[str, Path] | None:
    """The benchmark files [eval] benchmarks names: None for the five downloaded tasks, else <task>.jsonl files."""
    from edgedistil.eval.run import benchmark_folder

    b = recipe.eval.benchmarks
    if not b:
        return None
    return benchmark_folder(Path(__file__).parent / "eval" / "tiny_benchmarks" if b == "tiny" else b)


def eval_stage() -> Stage:
    """The distilled student beside its teacher (edgedistil/eval/): zero-shot benchmarks, chat behaviour and
    held-out agreement, in PyTorch; every target's bundle carries the summary in its manifest."""
    def key(run: Run) -> str:
        from edgedistil.eval.run import METHOD_VERSION

        files = recipe_benchmarks(run.recipe)
        # a trimmed head's chat answers come from the head as shipped since 2026-12-07 (whole-head keys unchanged)
        shipped_head = ("chat answers from the shipped head",) if run.recipe.student.head_rows else ()
        return stage_key("eval", METHOD_VERSION, run.key_of("distill"), run.recipe.section("eval"),
                         {k: sha256_file(v) for k, v in files.items()} if files else None, *shipped_head)

    def go(run: Run, folder: Path) -> dict:
        from edgedistil.eval.run import run_eval, summary

        e = run.recipe.eval
        student = run.out / "distill" / "student"
        heldout = (run.out / "distill" / "heldout.txt").read_text(encoding="utf-8")
        with atomic_dir(folder) as tmp:
            record = run_eval(student, run.teacher_dir(), tmp / "eval.json", subset=e.subset, log=run.log,
                              heldout_text=heldout, benchmarks=recipe_benchmarks(run.recipe), new_tokens=e.new_tokens)
            record = {"stage": "eval", **summary(record)}
            write_json(tmp / "record.json", record)
        return record

    return Stage("eval", "eval", key, go)


def eval_record(run: Run) -> dict | None:
    """The eval stage's record for a bundle's manifest; None when the recipe runs no eval stage."""
    path = run.out / "eval" / "record.json"
    return read_json(path, "eval record") if run.recipe.eval.run and path.is_file() else None


def export_stage(role: str, model_dir: Path | None = None, cache: str | None = None) -> Stage:
    """The student (or the teacher) to one ONNX graph for prefill and decode, checked against PyTorch. `cache`
    None exports the recipe's `[export] cache` layout into export/<role>/; a layout named here (a target's own,
    e.g. "hf") goes to export/<role>-<cache>/ beside it."""
    suffix = f"-{cache}" if cache else ""
    def model(run: Run) -> Path:
        if model_dir is not None:
            return Path(model_dir)
        return run.out / "distill" / "student" if role == "student" else run.teacher_dir()

    def key(run: Run) -> str:
        if not (model(run) / "config.json").is_file():
            raise EdgeError(f"model folder {model(run)} has no config.json",
                            "run `edgedistil distill` first, or pass --model PATH to an HF model folder")
        return stage_key("export", role, run.recipe.section("export"), folder_fingerprint(model(run)),
                         *([cache] if cache else []))

    def go(run: Run, folder: Path) -> dict:
        from edgedistil.export.onnx import run_export

        e = run.recipe.export
        heldout = run.heldout_ids()
        export = functools.partial(run_export, model(run), heldout_ids=heldout, max_len=e.max_len,
                                   prefill_len=e.prefill_len, role=role, log=run.log, cache=cache or e.cache)
        if role != "teacher" or model_dir is not None:
            return export(out_dir=folder)
        # every run folder of a recipe exports the same teacher on the same held-out text (71 s of a 705 s build):
        # export it once into the cache and link the files into each run
        from edgedistil.sources.cache import cache_dir

        ident = stage_key("teacher-export", key(run), hashlib.sha256(heldout.tobytes()).hexdigest())
        shared = cache_dir() / "teacher-exports" / ident
        if (shared / "record.json").is_file():
            run.log(f"export[teacher]: the export in {shared} (same teacher, layout and held-out text)")
        else:
            export(out_dir=shared)
        with atomic_dir(folder) as tmp:
            for f in shared.iterdir():
                try:
                    os.link(f, tmp / f.name)
                except OSError:  # another filesystem
                    shutil.copy2(f, tmp / f.name)
        return read_json(folder / "record.json", "export record")

    return Stage(f"export[{role}{suffix}]", f"export/{role}{suffix}", key, go)


def quantize_stage(method: str, src: Path | None = None, cache: str | None = None) -> Stage:
    """The exported student quantized by `method`, checked against the fp32 PyTorch student. `cache` names the
    export_stage layout it reads (None: the recipe's, export/student/), and its folder is quantize/<method>-<cache>/."""
    suffix = f"-{cache}" if cache else ""

    def source(run: Run) -> Path:
        return Path(src) if src else run.out / "export" / f"student{suffix}" / "model.onnx"

    def key(run: Run) -> str:
        read_json(source(run).parent / "record.json", "export record")  # refuses a model with no export record
        from edgedistil.quantize.onnx import SCHEME

        # the scheme's text names the method's rounding and grouping: a change there makes a new file
        return stage_key("quantize", method, SCHEME.get(method), sha256_file(source(run)),
                         run.recipe.export.prefill_len, run.recipe.section("quantize"))

    def go(run: Run, folder: Path) -> dict:
        from edgedistil.quantize.onnx import run_quantize

        model_dir = Path(read_json(source(run).parent / "record.json", "export record")["source"]["model_dir"])
        q = run.recipe.quantize
        keep_float = None if q.keep_float == ["auto"] else q.keep_float  # None: the method's measured default
        return run_quantize(source(run), model_dir, folder, run.heldout_ids(), run.recipe.export.prefill_len,
                            method, log=run.log, block_size=q.block_size, keep_float=keep_float, rounding=q.rounding,
                            eight_bit=None if q.int4_eight_bit == ["auto"] else tuple(q.int4_eight_bit))

    return Stage(f"quantize[{method}{suffix}]", f"quantize/{method}{suffix}", key, go)


def bench_prompt(run: Run) -> list[int]:
    """One prefill chunk of held-out text: the same prompt for every model benchmarked."""
    return run.heldout_ids()[: run.recipe.export.prefill_len].tolist()


def ort_bench_stage(models: dict[str, str], threads: int) -> Stage:
    """Native ONNX Runtime speed and memory of `models` (role -> path under the run folder), one process each."""
    def key(run: Run) -> str:
        return stage_key("bench", {k: sha256_file(run.out / v) for k, v in models.items()}, run.recipe.section("bench"),
                         threads)

    def go(run: Run, folder: Path) -> dict:
        from edgedistil.bench.ort import run_bench

        b = run.recipe.bench
        record = run_bench({k: run.out / v for k, v in models.items()}, bench_prompt(run),
                           run.recipe.export.prefill_len, b.new_tokens, b.repeats, threads, log=run.log)
        with atomic_dir(folder) as tmp:
            write_json(tmp / "record.json", record)
        return record

    return Stage("bench", "bench", key, go)


# ---- the chain ---------------------------------------------------------------------------------------------


def chain(target: Target, profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    """Every stage a build of `profile` runs, in order."""
    return [distill_stage(), *([eval_stage()] if recipe.eval.run else []), *target.stages(profile, recipe)]


def run_stages(run: Run, stages: list[Stage], force: bool = False) -> None:
    for s in stages:
        try:
            run.stage(s, force)
        except EdgeError as e:
            if not s.on_error:
                raise
            run.log(f"{s.name}: {s.on_error}: {e.line()}")


def convert(run: Run, name: str) -> dict:
    """The `convert` verb: the target's convert stages, rerun, from what the run folder holds."""
    from edgedistil.check.budgets import load_bundle_manifest

    profile, target = check_target(run, name)
    run_stages(run, [s for s in target.stages(profile, run.recipe) if s.convert], force=True)
    return load_bundle_manifest(run.out / "dist" / name)


def budgets_for(run: Run, profile: TargetProfile, budgets_file: Path | None) -> tuple[dict, list[str]]:
    """The limits a build checks, and the budgets that do not apply to its recipe. A --budgets file is used as
    written; the profile's budgets are adjusted by the recipe's [check] section."""
    if budgets_file:
        return load_budget_file(budgets_file), []
    c = run.recipe.check
    budgets = {**profile.budgets, **{k: v for k, v in c.budgets.items() if k in profile.budgets}}
    return budgets, [k for k in c.skip_budgets if k in budgets]


def build(run: Run, name: str, budgets_file: Path | None = None) -> tuple[list[dict], dict, dict | None]:
    """The whole chain for target `name`. Returns the check rows, the bundle manifest and the target profile's
    device estimate (None without a device)."""
    from edgedistil.check.budgets import evaluate, load_bundle_manifest, passed
    from edgedistil.check.devices import load_device, project

    profile, target = check_target(run, name)
    budgets, skip = budgets_for(run, profile, budgets_file)
    run_stages(run, chain(target, profile, run.recipe))
    manifest = load_bundle_manifest(run.out / "dist" / name)
    estimate = project(manifest, load_device(profile.device)) if profile.device else None
    rows = evaluate(manifest, budgets, estimate=estimate, skip=skip, skip_note=f"not for recipe {run.recipe.name}")
    write_json(run.out / "check.json", {"bundle": str(run.out / "dist" / name), "budgets": rows,
                                        "passed": passed(rows), "estimate": estimate})
    return rows, manifest, estimate


def recipe_with(recipe: Recipe, **section_overrides) -> Recipe:
    """A copy of `recipe` with some fields of its sections replaced, e.g. recipe_with(r, distill={"steps": 2})."""
    changes = {name: dataclasses.replace(getattr(recipe, name), **values) for name, values in section_overrides.items()}
    return dataclasses.replace(recipe, **changes)
