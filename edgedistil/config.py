"""Recipes and target profiles: TOML files read into small dataclasses, checked key by key.

A recipe (`models/*.toml`) says what to distill and how; a target profile (`targets/*.toml`) says what a target
runtime needs and which budgets a build must meet. Every mistake in either file is reported as one line that
names the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistil.errors import EdgeError

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS_DIR = REPO_ROOT / "targets"
MODELS_DIR = REPO_ROOT / "models"
TARGETS = ("web", "android", "ios")


@dataclass
class TeacherConfig:
    # "smollm2-135m-instruct" (the embedded default), "tiny" (in-process random, for tests) or an HF folder path
    source: str = "smollm2-135m-instruct"


@dataclass
class DataConfig:
    corpus: str = "kjv"  # "kjv" | "pydoc" | "tiny" | path to a UTF-8 .txt file or a .jsonl file with a "text" field
    heldout_fraction: float = 0.02
    seq_len: int = 64


STUDENT_INITS = ("even", "first", "random")
SHRINK_INITS = ("slice", "random")


@dataclass
class StudentConfig:
    layers: int = 6
    # "even" (teacher layers evenly spaced, as DistilBERT did) | "first" | "random" | a list of teacher layer indices
    init: str | list = "even"
    intermediate_size: int = 0  # 0 = the teacher's FFN width; smaller = a narrower FFN
    heads: int = 0  # 0 = the teacher's attention heads; fewer keeps the teacher's heads-per-kv-head ratio
    shrink_init: str = "slice"  # how narrowed weights start: "slice" (the teacher's first rows) | "random"
    source: str = ""  # "" = built from the teacher; or an HF folder of a ready student (e.g. a smaller pretrained LM)

    # keys whose TOML value may also be of these types (checked in _validate)
    also_accept = {"init": (list,)}


DISTILL_METHODS = ("response", "sequence")
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
FEATURE_LOSSES = ("mse", "cosine")


@dataclass
class DistillConfig:
    method: str = "response"  # "response" (soft labels, + features if feature_weight > 0) | "sequence" (teacher texts)
    loss: str = "forward_kl"  # "forward_kl" (Hinton) | "reverse_kl" (MiniLLM) | "jsd" (GKD, weighted by beta)
    beta: float = 0.5  # jsd only: the mixture weight, as in TRL's GKDTrainer
    alpha: float = 0.9
    temperature: float = 2.0
    feature_weight: float = 0.0  # > 0 adds hidden-state KD, weighted by this
    feature_loss: str = "mse"  # "mse" | "cosine"
    feature_layers: list = field(default_factory=list)  # teacher hidden-state index per student layer; [] = even
    steps: int = 200
    batch_size: int = 4
    lr: float = 3e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_tokens: int = 4096
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    grad_accum: int = 1  # micro-batches per optimizer step; batch_size is the global batch of one step
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = none
    teacher_topk: int = 0  # > 0: train from a cache of the teacher's top-k logits per position (built on first use)
    teacher_cache: str = ""  # the cache folder; "" = beside the stage folder (<out>/distill-teacher-cache)
    parallel: str = "ddp"  # under torchrun: "ddp" (each rank holds the models) | "fsdp" (student and teacher sharded)
    preflight_export: bool = True  # trial-export the student's decode graph before training


@dataclass
class SequenceConfig:
    """Sequence-level KD: the teacher writes completions that the student learns with plain CE."""
    prompts: str = ""  # "" = windows of the training corpus; or a .txt (one prompt a line) / .jsonl ("prompt" or "text")
    num_prompts: int = 256
    prompt_tokens: int = 16
    new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 50  # 0 = no top-k cut
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


@dataclass
class ExportConfig:
    max_len: int = 256
    prefill_len: int = 64
    # "full": the traced graph, whole cache in and out (k_cache/v_cache); runs everywhere (the web bundle's).
    # "gqa": per-layer caches updated in place by ORT's GroupQueryAttention (export/gqa.py); ONNX Runtime only.
    cache: str = "full"


@dataclass
class QuantizeConfig:
    # The method comes from the target profile's `quantization` (or `edgedistil quantize --method`).
    block_size: int = 32  # int4 (MatMulNBits): weights per scale along the input axis, a power of two >= 16
    # parts of layer names kept fp32 on purpose (e.g. "lm_head"); "auto" = the method's measured default
    keep_float: list = field(default_factory=lambda: ["auto"])
    # int4, int8_wo and int8_storage weights: "gptq" (error-compensating, calibrated on held-out text) or "nearest"
    rounding: str = "gptq"
    # int4: layer-name parts kept at 8 bits; "auto" = the LM head and down_proj (measured), [] = every layer 4-bit
    int4_eight_bit: list = field(default_factory=lambda: ["auto"])


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
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
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
    "unintended_float_layers_max": ("max", "layers"),
    # an estimate from a named device profile (check/devices.py), never a measurement
    "projected_decode_tokens_per_s_min": ("min", "tok/s (estimate)"),
}


@dataclass
class TargetProfile:
    target: str
    format: str
    quantization: str
    runtime: str
    threads: int = 1
    max_len: int = 256
    min_ios: int = 18  # ios only: 18 = stateful KV cache (multifunction package), 17 = cache as inputs and outputs
    compute: str = "fp16"  # ios only: Core ML compute precision, "fp16" (Neural Engine) or "mixed" (fp32 between
    # the fp16 matmuls)
    device: str = ""  # a named device profile (targets/devices/) whose projected decode speed `check` shows
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


def _key_line(path: Path, table: str | None, key: str) -> int | None:
    """The 1-based line where `key = ...` is set in `[table]` (None: the top level) of the TOML file `path`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    current = None
    for number, line in enumerate(lines, 1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header[1]
        elif current == table and re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return number
    return None


def _at(where: str, key: str) -> str:
    """`where` ("file.toml" or "file.toml [table]") with the line that sets `key`: "file.toml:12 [table]"."""
    m = re.fullmatch(r"(.+?\.toml)(?: \[(\w+)\])?", where)
    line = m and _key_line(Path(m[1]), m[2], key)
    if not line:
        return where
    return f"{m[1]}:{line}" + (f" [{m[2]}]" if m[2] else "")


def _unknown_key(where: str, key: str, valid) -> EdgeError:
    near = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(sorted(valid))}"
    return EdgeError(f"{_at(where, key)}: unknown key '{key}'", hint)


def _coerce(where: str, key: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of the dataclass default; ints are accepted where floats are."""
    kind = type(default)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise EdgeError(
            f"{_at(where, key)}: '{key}' must be {kind.__name__}, got {type(value).__name__} {value!r}",
            f"write it like {key} = {default!r}",
        )
    return value


def _fill(cls, where: str, table: dict):
    if not isinstance(table, dict):
        raise EdgeError(f"{where} must be a table", f"write it as [{where.split(' ')[-1]}] with key = value lines")
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    also = getattr(cls, "also_accept", {})
    for key, value in table.items():
        if key not in names:
            raise _unknown_key(where, key, names)
        if isinstance(value, also.get(key, ())):
            values[key] = value
            continue
        values[key] = _coerce(where, key, value, getattr(defaults, key))
    return cls(**values)


def _check_range(where: str, key: str, ok: bool, rule: str) -> None:
    if not ok:
        raise EdgeError(f"{_at(where, key)}: '{key}' {rule}", f"change {key} in that file")


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
    if isinstance(s.init, list):
        _check_range(f"{where} [student]", "init", len(s.init) == s.layers and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in s.init),
            f"as a list must hold {s.layers} teacher layer indices (one per student layer), got {s.init!r}")
    else:
        _check_range(f"{where} [student]", "init", s.init in STUDENT_INITS,
                     f"must be one of {', '.join(STUDENT_INITS)} or a list of teacher layer indices, got {s.init!r}")
    _check_range(f"{where} [student]", "intermediate_size", s.intermediate_size >= 0,
                 f"must be >= 0 (0 = the teacher's), got {s.intermediate_size}")
    _check_range(f"{where} [student]", "heads", s.heads >= 0, f"must be >= 0 (0 = the teacher's), got {s.heads}")
    _check_range(f"{where} [student]", "shrink_init", s.shrink_init in SHRINK_INITS,
                 f"must be one of {', '.join(SHRINK_INITS)}, got {s.shrink_init!r}")
    _check_range(f"{where} [distill]", "method", d.method in DISTILL_METHODS,
                 f"must be one of {', '.join(DISTILL_METHODS)}, got {d.method!r}")
    _check_range(f"{where} [distill]", "loss", d.loss in KD_LOSSES,
                 f"must be one of {', '.join(KD_LOSSES)}, got {d.loss!r}")
    _check_range(f"{where} [distill]", "beta", 0.0 < d.beta < 1.0, f"must be in (0, 1), got {d.beta}")
    _check_range(f"{where} [distill]", "feature_weight", d.feature_weight >= 0,
                 f"must be >= 0, got {d.feature_weight}")
    _check_range(f"{where} [distill]", "feature_loss", d.feature_loss in FEATURE_LOSSES,
                 f"must be one of {', '.join(FEATURE_LOSSES)}, got {d.feature_loss!r}")
    _check_range(f"{where} [distill]", "feature_layers", not d.feature_layers or (
        len(d.feature_layers) == s.layers and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1
                                                  for i in d.feature_layers)),
        f"must be [] or {s.layers} teacher hidden-state indices >= 1 (one per student layer), got {d.feature_layers!r}")
    _check_range(f"{where} [distill]", "grad_accum", d.grad_accum >= 1 and d.batch_size % d.grad_accum == 0,
                 f"must be >= 1 and divide batch_size ({d.batch_size}), got {d.grad_accum}")
    _check_range(f"{where} [distill]", "teacher_topk", d.teacher_topk >= 0,
                 f"must be >= 0 (0 = run the teacher live), got {d.teacher_topk}")
    if d.teacher_topk:
        _check_range(f"{where} [distill]", "teacher_topk",
                     d.method == "response" and d.loss == "forward_kl" and d.feature_weight == 0 and d.alpha > 0,
                     "needs method = \"response\", loss = \"forward_kl\", feature_weight = 0 and alpha > 0 (the "
                     "cache holds top-k logits only: no hidden states, and reverse KL/JSD need the whole vocabulary)")
    _check_range(f"{where} [distill]", "parallel", d.parallel in ("ddp", "fsdp"),
                 f"must be \"ddp\" or \"fsdp\", got {d.parallel!r}")
    _check_range(f"{where} [distill]", "parallel", not (d.parallel == "fsdp" and d.checkpoint_every),
                 "= \"fsdp\" cannot write resumable checkpoints yet (checkpoint_every > 0); use \"ddp\" or "
                 "checkpoint_every = 0")
    _check_range(f"{where} [distill]", "checkpoint_every", d.checkpoint_every >= 0,
                 f"must be >= 0 (0 = no checkpoints), got {d.checkpoint_every}")
    q = r.sequence
    for key in ("num_prompts", "prompt_tokens", "new_tokens", "batch_size"):
        _check_range(f"{where} [sequence]", key, getattr(q, key) >= 1, f"must be >= 1, got {getattr(q, key)}")
    _check_range(f"{where} [sequence]", "temperature", q.temperature >= 0,
                 f"must be >= 0 (0 = greedy), got {q.temperature}")
    _check_range(f"{where} [sequence]", "top_k", q.top_k >= 0, f"must be >= 0 (0 = off), got {q.top_k}")
    _check_range(f"{where} [sequence]", "top_p", 0.0 < q.top_p <= 1.0, f"must be in (0, 1], got {q.top_p}")
    _check_range(f"{where} [data]", "heldout_fraction", 0.0 < data.heldout_fraction <= 0.5,
                 f"must be in (0, 0.5], got {data.heldout_fraction}")
    _check_range(f"{where} [data]", "seq_len", data.seq_len >= 8, f"must be >= 8, got {data.seq_len}")
    _check_range(f"{where} [export]", "prefill_len", e.prefill_len >= 1, f"must be >= 1, got {e.prefill_len}")
    _check_range(f"{where} [export]", "max_len", e.max_len > e.prefill_len,
                 f"must be larger than prefill_len ({e.prefill_len}), got {e.max_len}")
    _check_range(f"{where} [export]", "cache", e.cache in ("full", "gqa"),
                 f"must be \"full\" or \"gqa\", got {e.cache!r}")
    qz = r.quantize
    _check_range(f"{where} [quantize]", "block_size", qz.block_size >= 16 and not qz.block_size & (qz.block_size - 1),
                 f"must be a power of two >= 16, got {qz.block_size}")
    _check_range(f"{where} [quantize]", "keep_float", all(isinstance(k, str) and k for k in qz.keep_float),
                 f"must be a list of layer-name parts like [\"lm_head\"], got {qz.keep_float!r}")
    _check_range(f"{where} [quantize]", "int4_eight_bit", all(isinstance(k, str) and k for k in qz.int4_eight_bit),
                 f"must be a list of layer-name parts like [\"lm_head\"], got {qz.int4_eight_bit!r}")
    _check_range(f"{where} [quantize]", "rounding", qz.rounding in ("gptq", "nearest"),
                 f"must be \"gptq\" or \"nearest\", got {qz.rounding!r}")
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
            raise EdgeError(f"{_at(where + ' [budgets]', key)}: '{key}' must be a number, got {value!r}",
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
    for key in ("threads", "max_len", "min_ios", "compute", "device"):
        if key in raw:
            _coerce(str(path), key, raw[key], getattr(defaults, key))
    if raw.get("device"):
        from edgedistil.check.devices import load_device

        try:
            load_device(raw["device"])
        except EdgeError as e:
            raise EdgeError(f"{_at(str(path), 'device')}: {e.problem}", e.fix) from None
    return TargetProfile(
        target=raw["target"], format=raw["format"], quantization=raw["quantization"], runtime=raw["runtime"],
        threads=raw.get("threads", 1), max_len=raw.get("max_len", 256), min_ios=raw.get("min_ios", 18),
        compute=raw.get("compute", "fp16"), device=raw.get("device", ""),
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
