"""Recipes and target profiles: TOML files read into small dataclasses, checked key by key.

A recipe (`models/*.toml`) says what to distill and how; a target profile (`targets/*.toml`) says what a target
runtime needs and which budgets a build must meet. Every mistake in either file is reported as one line that
names the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistil.errors import EdgeError

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = REPO_ROOT / "targets"
MODELS_DIR = REPO_ROOT / "models"
TARGETS = ("web", "android", "ios")
BUILT_TARGETS = ("web",)  # the others have profiles and issues, not yet a converter


@dataclass
class TeacherConfig:
    # "smollm2-135m-instruct" (the embedded default), "tiny" (in-process random, for tests) or an HF folder path
    source: str = "smollm2-135m-instruct"


@dataclass
class DataConfig:
    corpus: str = "kjv"  # "kjv" | "pydoc" | "tiny" | path to a UTF-8 .txt file
    heldout_fraction: float = 0.02
    seq_len: int = 64


@dataclass
class StudentConfig:
    layers: int = 6
    init: str = "even"  # teacher layers picked evenly spaced, as DistilBERT did


@dataclass
class DistillConfig:
    alpha: float = 0.9
    temperature: float = 2.0
    steps: int = 200
    batch_size: int = 4
    lr: float = 3e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_tokens: int = 4096
    device: str = "auto"  # "auto" | "cpu" | "cuda"


@dataclass
class ExportConfig:
    max_len: int = 256
    prefill_len: int = 64


@dataclass
class BenchConfig:
    new_tokens: int = 32
    repeats: int = 3


@dataclass
class Recipe:
    name: str = "default"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    path: str | None = None  # where it was read from; not a TOML key

    def section(self, name: str) -> dict:
        return dataclasses.asdict(getattr(self, name))


BUDGETS = {
    # name: (direction, unit) - "min" budgets fail below, "max" budgets fail above
    "decode_tokens_per_s_min": ("min", "tok/s"),
    "prefill_tokens_per_s_min": ("min", "tok/s"),
    "ttft_ms_max": ("max", "ms"),
    "peak_memory_mb_max": ("max", "MB"),
    "size_mb_max": ("max", "MB"),
    "top1_agreement_min": ("min", ""),
    "kl_mean_max": ("max", "nats"),
    "quality_retained_min": ("min", ""),
    "speedup_vs_teacher_min": ("min", "x"),
}


@dataclass
class TargetProfile:
    target: str
    format: str
    quantization: str
    runtime: str
    threads: int = 1
    max_len: int = 256
    budgets: dict[str, float] = field(default_factory=dict)
    path: str | None = None


# --------------------------------------------------------------------------------------------------------------
# reading


def _read_toml(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{what} {path} does not exist", f"check the path, or run `edgedistil init` to write a {what}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise EdgeError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})", "save it as UTF-8 TOML")
    except tomllib.TOMLDecodeError as e:
        raise EdgeError(f"{what} {path} is not valid TOML: {e}", "fix the syntax at that line")


def _unknown_key(where: str, key: str, valid) -> EdgeError:
    near = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(sorted(valid))}"
    return EdgeError(f"{where}: unknown key '{key}'", hint)


def _coerce(where: str, key: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of the dataclass default; ints are accepted where floats are."""
    kind = type(default)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise EdgeError(
            f"{where}: '{key}' must be {kind.__name__}, got {type(value).__name__} {value!r}",
            f"write it like {key} = {default!r}",
        )
    return value


def _fill(cls, where: str, table: dict):
    if not isinstance(table, dict):
        raise EdgeError(f"{where} must be a table", f"write it as [{where.split(' ')[-1]}] with key = value lines")
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in names:
            raise _unknown_key(where, key, names)
        values[key] = _coerce(where, key, value, getattr(defaults, key))
    return cls(**values)


def _check_range(where: str, key: str, ok: bool, rule: str) -> None:
    if not ok:
        raise EdgeError(f"{where}: '{key}' {rule}", f"change {key} in that file")


def load_recipe(path: Path | str | None) -> Recipe:
    """Read a recipe TOML (or the built-in defaults when `path` is None) and check every key and range."""
    if path is None:
        return Recipe()
    path = Path(path)
    raw = _read_toml(path, "recipe")
    sections = {f.name: f.type for f in dataclasses.fields(Recipe) if f.name not in ("name", "path")}
    recipe = Recipe(path=str(path))
    for key, value in raw.items():
        where = f"{path} [{key}]"
        if key == "name":
            recipe.name = _coerce(str(path), "name", value, "default")
        elif key in sections:
            cls = globals()[sections[key]] if isinstance(sections[key], str) else sections[key]
            setattr(recipe, key, _fill(cls, where, value))
        else:
            raise _unknown_key(str(path), key, set(sections) | {"name"})
    _validate(recipe, str(path))
    return recipe


def _validate(r: Recipe, where: str) -> None:
    d, s, e, b, data = r.distill, r.student, r.export, r.bench, r.data
    _check_range(f"{where} [distill]", "alpha", 0.0 <= d.alpha <= 1.0, f"must be in [0, 1], got {d.alpha}")
    _check_range(f"{where} [distill]", "temperature", d.temperature > 0, f"must be > 0, got {d.temperature}")
    _check_range(f"{where} [distill]", "steps", d.steps >= 1, f"must be >= 1, got {d.steps}")
    _check_range(f"{where} [distill]", "batch_size", d.batch_size >= 1, f"must be >= 1, got {d.batch_size}")
    _check_range(f"{where} [distill]", "lr", d.lr > 0, f"must be > 0, got {d.lr}")
    _check_range(f"{where} [distill]", "warmup_steps", d.warmup_steps >= 0, f"must be >= 0, got {d.warmup_steps}")
    _check_range(f"{where} [distill]", "grad_clip", d.grad_clip > 0, f"must be > 0, got {d.grad_clip}")
    _check_range(f"{where} [distill]", "eval_tokens", d.eval_tokens >= 2, f"must be >= 2, got {d.eval_tokens}")
    _check_range(f"{where} [distill]", "device", d.device in ("auto", "cpu", "cuda"),
                 f"must be auto, cpu or cuda, got {d.device!r}")
    _check_range(f"{where} [student]", "layers", s.layers >= 1, f"must be >= 1, got {s.layers}")
    _check_range(f"{where} [student]", "init", s.init == "even", f"must be 'even' (teacher layers evenly spaced), "
                 f"got {s.init!r}")
    _check_range(f"{where} [data]", "heldout_fraction", 0.0 < data.heldout_fraction <= 0.5,
                 f"must be in (0, 0.5], got {data.heldout_fraction}")
    _check_range(f"{where} [data]", "seq_len", data.seq_len >= 8, f"must be >= 8, got {data.seq_len}")
    _check_range(f"{where} [export]", "prefill_len", e.prefill_len >= 1, f"must be >= 1, got {e.prefill_len}")
    _check_range(f"{where} [export]", "max_len", e.max_len > e.prefill_len,
                 f"must be larger than prefill_len ({e.prefill_len}), got {e.max_len}")
    _check_range(f"{where} [bench]", "new_tokens", b.new_tokens >= 1, f"must be >= 1, got {b.new_tokens}")
    _check_range(f"{where} [bench]", "repeats", b.repeats >= 1, f"must be >= 1, got {b.repeats}")
    _check_range(f"{where} [bench]", "new_tokens", e.prefill_len + b.new_tokens <= e.max_len,
                 f"plus [export] prefill_len must fit in max_len ({e.max_len})")


def target_profile_path(target: str) -> Path:
    if target not in TARGETS:
        near = difflib.get_close_matches(target, TARGETS, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise EdgeError(f"unknown target '{target}'", f"{hint}use one of: {', '.join(TARGETS)}")
    return TARGETS_DIR / f"{target}.toml"


def load_budgets(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise EdgeError(f"{where}: [budgets] must be a table", "write it as [budgets] with name = number lines")
    budgets = {}
    for key, value in raw.items():
        if key not in BUDGETS:
            raise _unknown_key(f"{where} [budgets]", key, BUDGETS)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgeError(f"{where} [budgets]: '{key}' must be a number, got {value!r}",
                            f"write it like {key} = 10.0")
        budgets[key] = float(value)
    return budgets


def load_target(target_or_path: str | Path) -> TargetProfile:
    """Read a target profile by target name (`web`) or by path to a profile TOML."""
    p = Path(target_or_path)
    path = p if p.suffix == ".toml" else target_profile_path(str(target_or_path))
    raw = _read_toml(path, "target profile")
    keys = {f.name for f in dataclasses.fields(TargetProfile)} - {"path"}
    for key in raw:
        if key not in keys:
            raise _unknown_key(str(path), key, keys)
    for key in ("target", "format", "quantization", "runtime"):
        if not isinstance(raw.get(key), str):
            raise EdgeError(f"{path}: '{key}' is missing or not a string", f"add {key} = \"...\" to the profile")
    if raw["target"] not in TARGETS:
        raise EdgeError(f"{path}: unknown target '{raw['target']}'", f"use one of: {', '.join(TARGETS)}")
    defaults = TargetProfile("", "", "", "")
    for key in ("threads", "max_len"):
        if key in raw:
            _coerce(str(path), key, raw[key], getattr(defaults, key))
    return TargetProfile(
        target=raw["target"], format=raw["format"], quantization=raw["quantization"], runtime=raw["runtime"],
        threads=raw.get("threads", 1), max_len=raw.get("max_len", 256),
        budgets=load_budgets(raw.get("budgets", {}), str(path)), path=str(path),
    )


def load_budget_file(path: Path | str) -> dict[str, float]:
    """Budgets from a target profile or from a plain TOML holding a [budgets] table."""
    path = Path(path)
    raw = _read_toml(path, "budgets file")
    if "budgets" not in raw:
        raise EdgeError(f"{path}: no [budgets] table", "add a [budgets] table, e.g. decode_tokens_per_s_min = 10")
    if "target" in raw:
        return load_target(path).budgets
    extra = set(raw) - {"budgets"}
    if extra:
        raise _unknown_key(str(path), sorted(extra)[0], {"budgets"})
    return load_budgets(raw["budgets"], str(path))
