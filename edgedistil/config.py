"""Recipes and target profiles: TOML files read into small dataclasses, checked key by key.

A recipe (`models/*.toml`) says what to distill and how; a target profile (`targets/*.toml`) says what a target
runtime needs and which budgets a build must meet. Every mistake in either file is reported as one line that
names the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import pkgutil
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistil.check.devices import load_device
from edgedistil.errors import EdgeError
from edgedistil.schema import REPO_ROOT, TARGETS_DIR, at, coerce, key_line_in, read_toml, unknown_key

MODELS_DIR = REPO_ROOT / "models"
# The registry: a target is a profile in targets/, and the profile names the module that builds it
TARGETS = tuple(sorted(p.stem for p in TARGETS_DIR.glob("*.toml")))
TARGET_MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent / "targets")])
                              if not m.name.startswith("_")))


@dataclass
class TeacherConfig:
    # "smollm2-135m-instruct" (the embedded default), "tiny" (in-process random, for tests) or an HF folder path
    source: str = "smollm2-135m-instruct"


@dataclass
class DataConfig:
    # "teacher-chat" (conversations the teacher writes, sources/teacher_chat.py) | "kjv" | "pydoc" | "tiny" |
    # path to a UTF-8 .txt file or a .jsonl file with a "text" field
    corpus: str = "teacher-chat"
    heldout_fraction: float = 0.2
    seq_len: int = 192
    # where training windows start: "random" (anywhere in the token stream) | "documents" (at a document's start:
    # a conversation, a JSONL row, or a line of a plain text), so a window holds whole documents from their start
    windows: str = "documents"
    chat_conversations: int = 512  # teacher-chat only: conversations the teacher writes (once, into the cache)
    chat_query_tokens: int = 40  # teacher-chat: longest user request, sampled
    chat_answer_tokens: int = 112  # teacher-chat: longest answer, greedy
    chat_no_repeat_ngram: int = 0  # teacher-chat: > 0 = the answer repeats no n-gram of this length; 0 = plain greedy
    chat_drop_loops: bool = True  # teacher-chat: leave out conversations whose answer loops (read-time filter)
    # teacher-chat: documents the teacher also writes from its document-start token (its pretraining distribution:
    # general text, for the benchmarks' knowledge), mixed in with the conversations; once, cached apart; 0 = none
    chat_documents: int = 0
    chat_document_tokens: int = 192  # teacher-chat: longest document, sampled
    heldout_corpus: str = "pydoc"  # a second held-out corpus, never trained on ("" = none): kjv | pydoc | path


WINDOWS = ("random", "documents")
# "auto" = distill/prune.py's AUTO_RANKING: the measured pick that did best after distillation (docs/benchmarks.md)
STUDENT_INITS = ("auto", "greedy", "block_influence", "angular", "even", "first", "random")
SHRINK_INITS = ("importance", "slice", "random")


@dataclass
class StudentConfig:
    layers: int = 14
    # "auto" (teacher layers chosen by measurement, distill/prune.py) | "greedy" | "block_influence" | "angular" |
    # "even" (evenly spaced, as DistilBERT did) | "first" | "random" | a list of teacher layer indices
    init: str | list = "auto"
    intermediate_size: int = 1024  # 0 = the teacher's FFN width; smaller = a narrower FFN
    heads: int = 0  # 0 = the teacher's attention heads; fewer keeps the teacher's heads-per-kv-head ratio
    # how narrowed weights start: "importance" (the FFN neurons and KV groups most active on calibration text, as
    # Minitron ranks width) | "slice" (the teacher's first rows) | "random"
    shrink_init: str = "importance"
    source: str = ""  # "" = built from the teacher; or an HF folder of a ready student (e.g. a smaller pretrained LM)
    # output-head rows kept (distill/head.py): 0 = the whole vocabulary; K = the K ids the teacher puts the most
    # probability on over the training text, chosen before training, with the bytes and special tokens (the others
    # never produced, and a decode step reads K rows of the vocabulary matrix instead of all of them)
    head_rows: int = 16384

    # keys whose TOML value may also be of these types (checked in _validate)
    also_accept = {"init": (list,)}


DISTILL_METHODS = ("response", "sequence")
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
FEATURE_LOSSES = ("mse", "cosine")
TRAIN_HEADS = ("whole", "kept")


@dataclass
class DistillConfig:
    method: str = "response"  # "response" (soft labels, + features if feature_weight > 0) | "sequence" (teacher texts)
    loss: str = "forward_kl"  # "forward_kl" (Hinton) | "reverse_kl" (MiniLLM) | "jsd" (GKD, weighted by beta)
    beta: float = 0.5  # jsd only: the mixture weight, as in TRL's GKDTrainer
    alpha: float = 0.9
    temperature: float = 1.0
    feature_weight: float = 0.0  # > 0 adds hidden-state KD, weighted by this
    feature_loss: str = "mse"  # "mse" | "cosine"
    feature_layers: list = field(default_factory=list)  # teacher hidden-state index per student layer; [] = even
    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3  # measured with frozen embeddings; training them at 1e-3 diverged (3e-4 was stable)
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_tokens: int = 4096
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    # "auto": bf16 autocast on a GPU and on a CPU that multiplies bf16 natively (AMX, AVX512-BF16), else fp32
    precision: str = "auto"
    grad_accum: int = 1  # micro-batches per optimizer step; batch_size is the global batch of one step
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = none
    teacher_topk: int = 128  # > 0: train from a cache of the teacher's top-k logits per position (built on first use)
    teacher_cache: str = ""  # the cache folder; "" = in the edgedistil cache, keyed by teacher, data and sampling
    parallel: str = "ddp"  # under torchrun: "ddp" (each rank holds the models) | "fsdp" (student and teacher sharded)
    preflight_export: bool = True  # trial-export the student's decode graph before training
    # keep the teacher's token embedding (and the LM head tied to it) fixed: a third fewer FLOPs in the head's
    # backward, no optimizer state for a fifth of SmolLM2, and it allows lr 1e-3 (docs/benchmarks.md)
    freeze_embeddings: bool = True
    # on-policy distillation (GKD): this share of the steps trains on answers the student samples itself, scored
    # by the live teacher (distill/on_policy.py); 0 = off-policy only
    on_policy: float = 0.0
    on_policy_tokens: int = 64  # tokens the student samples per answer on an on-policy step
    on_policy_temperature: float = 1.0  # the student's sampling temperature there; 0 = greedy
    # sequence-level unlikelihood (Welleck et al. 2020) on on-policy steps: the tokens of each n-gram that repeats
    # in the student's own answer are pushed down (-log(1 - p)) with this weight instead of being scored by the
    # teacher, who endorses a loop once it is in context (docs/quality.md); 0 = off
    unlikelihood: float = 0.0
    unlikelihood_ngram: int = 4  # n of the repeated n-grams
    # token-level unlikelihood (Welleck et al. 2020) on the training windows: at each position, the tokens that would
    # repeat an n-gram of the context but are not the real next token get -log(1 - p) with this weight; n = 1 is
    # every earlier token, n >= 2 the token that followed an earlier occurrence of the last n - 1; 0 = off
    token_unlikelihood: float = 0.0
    token_unlikelihood_ngram: int = 1
    # what the student's softmax runs over while it trains, with [student] head_rows: "whole" (the whole vocabulary;
    # the head is cut after) | "kept" (the kept rows alone: 1.22x the training tokens/s on 2 CPU cores; one run, inside
    # the seeds' spread of the default: docs/benchmarks.md, "The output head")
    train_head: str = "whole"
    # teacher correction (Minitron): fine-tune the teacher with CE on the training split for this many steps before it
    # teaches, for a corpus it models poorly (distill/correction.py; one-time, cached); 0 = the teacher as given
    teacher_correction_steps: int = 0
    teacher_correction_lr: float = 1e-4


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
    # int4: layer-name parts kept at 8 bits, e.g. ["lm_head", "down_proj"] for fidelity over size and speed; "auto" =
    # the method's measured default (every layer 4-bit: edgedistil/quantize/onnx.py, INT4_EIGHT_BIT)
    int4_eight_bit: list = field(default_factory=lambda: ["auto"])


@dataclass
class BenchConfig:
    new_tokens: int = 32
    repeats: int = 3


EVAL_SUBSETS = ("fast", "full")


@dataclass
class EvalConfig:
    """The eval stage every build runs: the student beside its teacher (edgedistil/eval/)."""
    run: bool = True  # false: no eval stage (the manifest then has no evaluation section)
    subset: str = "fast"  # "fast": a few hundred items (about a minute for a 6-layer student) | "full"
    benchmarks: str = ""  # "" = the five built-in benchmarks (downloaded once) | "tiny" (a shipped fixture) | a folder
    new_tokens: int = 80  # greedy tokens per chat answer


@dataclass
class CheckConfig:
    """How the build's check treats this recipe's model (a smoke model is not held to a real model's budgets)."""
    # limits that replace the target profile's budgets of the same name, e.g. { top1_agreement_min = 0.8 }
    budgets: dict = field(default_factory=dict)
    skip_budgets: list = field(default_factory=list)  # profile budgets that do not apply: shown as "skip"


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
    eval: EvalConfig = field(default_factory=EvalConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
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
    # web: our page's decode speed over Transformers.js' on the same q8 file, same browser and threads
    "decode_vs_transformersjs_min": ("min", "x"),
    # onnx: onnxruntime-genai's decode speed on our folder over its own model builder's export of the same student
    "genai_fp32_vs_builder_min": ("min", "x"),
    "genai_q4_vs_builder_min": ("min", "x"),
    "unintended_float_layers_max": ("max", "layers"),
    # the eval stage (PyTorch student vs teacher): mean share of the teacher's margin above chance kept over the
    # benchmarks (and pooled), and the share of chat answers that are empty or loop
    "benchmark_margin_kept_min": ("min", ""),
    "benchmark_margin_kept_pooled_min": ("min", ""),  # summed margins: robust where a teacher is near chance
    "degenerate_answers_max": ("max", ""),
    "rouge_l_vs_teacher_min": ("min", ""),
    # android: LiteRT-LM's own benchmark of the .litertlm on the host CPU (manifest `litertlm_bench`), and the share
    # of greedy tokens LiteRT-LM generates equal to the fp32 PyTorch student's (the shipped variant's, and fp32's)
    "litertlm_decode_tokens_per_s_min": ("min", "tok/s"),
    "litertlm_prefill_tokens_per_s_min": ("min", "tok/s"),
    "litertlm_ttft_ms_max": ("max", "ms"),
    "litertlm_peak_memory_mb_max": ("max", "MB"),
    "litertlm_speedup_vs_teacher_min": ("min", "x"),
    "litertlm_decode_vs_host_loop_min": ("min", "x"),  # LiteRT-LM decode / our host LiteRT loop, same graph
    "litertlm_tokens_match_min": ("min", ""),
    "litertlm_fp32_tokens_match_min": ("min", ""),
    # android `bench --emulator`: top-1 agreement on emulated ARM64 minus x86-64's, in absolute value (0.005 = 0.5
    # points, the goal)
    "emulated_arm64_top1_gap_max": ("max", ""),
    # an estimate from a named device profile (check/devices.py), never a measurement
    "projected_decode_tokens_per_s_min": ("min", "tok/s (estimate)"),
}


@dataclass
class TargetProfile:
    target: str
    format: str
    quantization: str
    runtime: str
    module: str = ""  # the module in edgedistil/targets/ that builds it (`module = "web"`: edgedistil.targets.web)
    threads: int = 1
    max_len: int = 256
    min_ios: int = 18  # ios only: 18 = stateful KV cache (multifunction package), 17 = cache as inputs and outputs
    compute: str = "fp16"  # ios only: Core ML compute precision, "fp16" (Neural Engine) or "mixed" (fp32 between
    # the fp16 matmuls)
    device: str = ""  # a named device profile (targets/devices/) whose projected decode speed `check` shows
    # the Hugging Face ONNX layout in the bundle (convert/hf_onnx.py): Transformers.js dtype -> the method that
    # makes its file ("fp32": the export itself), e.g. {fp32 = "fp32", q8 = "int8_storage"}; empty: none
    hf_onnx: dict[str, str] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)
    path: str | None = None


# --------------------------------------------------------------------------------------------------------------
# reading


def _fill(cls, where: str, table: dict):
    if not isinstance(table, dict):
        raise EdgeError(f"{where} must be a table", f"write it as [{where.split(' ')[-1]}] with key = value lines")
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    also = getattr(cls, "also_accept", {})
    for key, value in table.items():
        if key not in names:
            raise unknown_key(where, key, names)
        if isinstance(value, also.get(key, ())):
            values[key] = value
            continue
        values[key] = coerce(where, key, value, getattr(defaults, key))
    return cls(**values)


def _check_range(where, table: str, key: str, ok: bool, rule: str) -> None:
    if not ok:
        place = where(table, key)
        fix = f"change {key} on the command line" if place.startswith("--set") else f"change {key} in that file"
        raise EdgeError(f"{place}: '{key}' {rule}", fix)


def parse_set(item: str) -> tuple[str, str, Any]:
    """`section.key=value` from --set -> (section, key, value). The value is read as TOML (1, 2.0, true, "x",
    [1, 2]) and otherwise kept as a bare string, as Hydra reads `teacher.source=tiny`."""
    name, eq, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not (eq and dot and section and key):
        raise EdgeError(f"--set {item!r} is not section.key=value", "write it like --set distill.temperature=1")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return section, key.strip(), value


def set_in_text(text: str, item: str) -> str:
    """Recipe TOML `text` with the key of a --set `item` written in, its comments and layout kept (`init --set`)."""
    section, key, value = parse_set(item)
    literal = item.partition("=")[2].strip()
    try:
        tomllib.loads(f"v = {literal}")
    except tomllib.TOMLDecodeError:  # a bare string: written quoted
        literal = json.dumps(value)
    lines = text.splitlines()
    number = key_line_in(lines, section, key)
    if number:
        old = lines[number - 1]
        comment = re.search(r"\s+#[^\"']*$", old)
        lines[number - 1] = f"{old[:old.index('=')].rstrip()} = {literal}" + (comment[0] if comment else "")
    else:
        header = next((i for i, line in enumerate(lines) if re.fullmatch(rf"\s*\[\s*{section}\s*\]\s*(#.*)?", line)),
                      None)
        if header is None:
            lines += ["", f"[{section}]"]
            header = len(lines) - 1
        lines.insert(header + 1, f"{key} = {literal}")
    return "\n".join(lines) + "\n"


def load_recipe(path: Path | str | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe TOML (the built-in defaults when `path` is None), apply `--set section.key=value` overrides,
    and check every key and range; a mistake names the file and line, or the --set item."""
    raw = read_toml(Path(path), "recipe") if path is not None else {}
    origin = str(path) if path is not None else "the built-in recipe"
    sections = {f.name: f.type for f in dataclasses.fields(Recipe) if f.name not in ("name", "path")}

    def section_class(name):
        return globals()[sections[name]] if isinstance(sections[name], str) else sections[name]

    set_by = {}  # (section, key) -> the --set item that gave its value
    for item in overrides:
        section, key, value = parse_set(item)
        if section not in sections:
            raise unknown_key(f"--set {item}", section, sections)
        _fill(section_class(section), f"--set {item}", {key: value})  # the key and its type, named as given
        if isinstance(raw.get(section, {}), dict):
            raw[section] = {**raw.get(section, {}), key: value}
        set_by[(section, key)] = item
    recipe = Recipe(path=str(path) if path is not None else None)
    for key, value in raw.items():
        if key == "name":
            recipe.name = coerce(origin, "name", value, "default")
        elif key in sections:
            setattr(recipe, key, _fill(section_class(key), f"{origin} [{key}]", value))
        else:
            raise unknown_key(origin, key, set(sections) | {"name"})

    def where(table: str, key: str) -> str:
        item = set_by.get((table, key))
        return f"--set {item}" if item else at(f"{origin} [{table}]", key)

    _validate(recipe, where)
    return recipe


def _validate(r: Recipe, where) -> None:
    """Every range; `where(table, key)` names the file line or the --set item that set the key."""
    d, s, e, b, data = r.distill, r.student, r.export, r.bench, r.data
    _check_range(where, "distill", "alpha", 0.0 <= d.alpha <= 1.0, f"must be in [0, 1], got {d.alpha}")
    _check_range(where, "distill", "temperature", d.temperature > 0, f"must be > 0, got {d.temperature}")
    _check_range(where, "distill", "steps", d.steps >= 1, f"must be >= 1, got {d.steps}")
    _check_range(where, "distill", "batch_size", d.batch_size >= 1, f"must be >= 1, got {d.batch_size}")
    _check_range(where, "distill", "lr", d.lr > 0, f"must be > 0, got {d.lr}")
    _check_range(where, "distill", "warmup_steps", d.warmup_steps >= 0, f"must be >= 0, got {d.warmup_steps}")
    _check_range(where, "distill", "grad_clip", d.grad_clip > 0, f"must be > 0, got {d.grad_clip}")
    _check_range(where, "distill", "eval_tokens", d.eval_tokens >= 2, f"must be >= 2, got {d.eval_tokens}")
    _check_range(where, "distill", "device", d.device in ("auto", "cpu", "cuda"),
                 f"must be auto, cpu or cuda, got {d.device!r}")
    _check_range(where, "distill", "precision", d.precision in ("auto", "fp32", "bf16"),
                 f"must be auto, fp32 or bf16, got {d.precision!r}")
    _check_range(where, "student", "layers", s.layers >= 1, f"must be >= 1, got {s.layers}")
    if isinstance(s.init, list):
        _check_range(where, "student", "init", len(s.init) == s.layers and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in s.init),
            f"as a list must hold {s.layers} teacher layer indices (one per student layer), got {s.init!r}")
    else:
        _check_range(where, "student", "init", s.init in STUDENT_INITS,
                     f"must be one of {', '.join(STUDENT_INITS)} or a list of teacher layer indices, got {s.init!r}")
    _check_range(where, "student", "intermediate_size", s.intermediate_size >= 0,
                 f"must be >= 0 (0 = the teacher's), got {s.intermediate_size}")
    _check_range(where, "student", "heads", s.heads >= 0, f"must be >= 0 (0 = the teacher's), got {s.heads}")
    _check_range(where, "student", "head_rows", s.head_rows >= 0,
                 f"must be >= 0 (0 = the whole vocabulary), got {s.head_rows}")
    _check_range(where, "student", "shrink_init", s.shrink_init in SHRINK_INITS,
                 f"must be one of {', '.join(SHRINK_INITS)}, got {s.shrink_init!r}")
    _check_range(where, "distill", "method", d.method in DISTILL_METHODS,
                 f"must be one of {', '.join(DISTILL_METHODS)}, got {d.method!r}")
    _check_range(where, "distill", "loss", d.loss in KD_LOSSES,
                 f"must be one of {', '.join(KD_LOSSES)}, got {d.loss!r}")
    _check_range(where, "distill", "beta", 0.0 < d.beta < 1.0, f"must be in (0, 1), got {d.beta}")
    _check_range(where, "distill", "feature_weight", d.feature_weight >= 0,
                 f"must be >= 0, got {d.feature_weight}")
    _check_range(where, "distill", "feature_loss", d.feature_loss in FEATURE_LOSSES,
                 f"must be one of {', '.join(FEATURE_LOSSES)}, got {d.feature_loss!r}")
    _check_range(where, "distill", "feature_layers", not d.feature_layers or (
        len(d.feature_layers) == s.layers and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1
                                                  for i in d.feature_layers)),
        f"must be [] or {s.layers} teacher hidden-state indices >= 1 (one per student layer), got {d.feature_layers!r}")
    _check_range(where, "distill", "grad_accum", d.grad_accum >= 1 and d.batch_size % d.grad_accum == 0,
                 f"must be >= 1 and divide batch_size ({d.batch_size}), got {d.grad_accum}")
    _check_range(where, "distill", "on_policy", 0.0 <= d.on_policy <= 1.0,
                 f"must be in [0, 1] (the share of on-policy steps), got {d.on_policy}")
    _check_range(where, "distill", "on_policy", not (d.on_policy and d.method == "sequence"),
                 "must be 0 with method = \"sequence\" (the student learns the teacher's texts there); use "
                 "method = \"response\"")
    _check_range(where, "distill", "on_policy", not (d.on_policy and d.alpha == 0 and d.feature_weight == 0),
                 "must be 0 for CE-only training (alpha = 0): an on-policy step learns from the teacher's soft "
                 "labels; raise alpha")
    _check_range(where, "distill", "on_policy", not (d.on_policy and d.parallel == "fsdp"),
                 "must be 0 with parallel = \"fsdp\" (the student samples from its whole weights); use \"ddp\"")
    _check_range(where, "distill", "on_policy_tokens", d.on_policy_tokens >= 1,
                 f"must be >= 1, got {d.on_policy_tokens}")
    _check_range(where, "distill", "on_policy_temperature", d.on_policy_temperature >= 0,
                 f"must be >= 0 (0 = greedy), got {d.on_policy_temperature}")
    _check_range(where, "distill", "unlikelihood", d.unlikelihood >= 0,
                 f"must be >= 0 (0 = off), got {d.unlikelihood}")
    _check_range(where, "distill", "unlikelihood", not (d.unlikelihood and not d.on_policy),
                 "needs on-policy steps (it penalises the loops of the student's own answers); set on_policy > 0")
    _check_range(where, "distill", "unlikelihood_ngram", d.unlikelihood_ngram >= 2,
                 f"must be >= 2, got {d.unlikelihood_ngram}")
    _check_range(where, "distill", "token_unlikelihood", d.token_unlikelihood >= 0,
                 f"must be >= 0 (0 = off), got {d.token_unlikelihood}")
    _check_range(where, "distill", "token_unlikelihood_ngram", d.token_unlikelihood_ngram >= 1,
                 f"must be >= 1, got {d.token_unlikelihood_ngram}")
    _check_range(where, "distill", "train_head", d.train_head in TRAIN_HEADS,
                 f"must be one of {', '.join(TRAIN_HEADS)}, got {d.train_head!r}")
    _check_range(where, "distill", "train_head", not (d.train_head == "kept" and not s.head_rows),
                 "= 'kept' trains over a trimmed head's rows; set [student] head_rows > 0, or train_head = 'whole'")
    _check_range(where, "distill", "train_head", not (d.train_head == "kept" and d.on_policy),
                 "= 'kept' cannot score on-policy samples (they are drawn from the whole vocabulary); set "
                 "train_head = 'whole' or on_policy = 0")
    _check_range(where, "distill", "teacher_correction_steps", d.teacher_correction_steps >= 0,
                 f"must be >= 0 (0 = the teacher as given), got {d.teacher_correction_steps}")
    _check_range(where, "distill", "teacher_correction_lr", d.teacher_correction_lr > 0,
                 f"must be > 0, got {d.teacher_correction_lr}")
    _check_range(where, "distill", "teacher_correction_steps", not (d.teacher_correction_steps and
                                                                     d.parallel == "fsdp"),
                 "must be 0 with parallel = \"fsdp\" (one process fine-tunes the whole teacher); use \"ddp\"")
    _check_range(where, "distill", "teacher_topk", d.teacher_topk >= 0,
                 f"must be >= 0 (0 = run the teacher live), got {d.teacher_topk}")
    _check_range(where, "distill", "parallel", d.parallel in ("ddp", "fsdp"),
                 f"must be \"ddp\" or \"fsdp\", got {d.parallel!r}")
    _check_range(where, "distill", "parallel", not (d.parallel == "fsdp" and d.checkpoint_every),
                 "= \"fsdp\" cannot write resumable checkpoints yet (checkpoint_every > 0); use \"ddp\" or "
                 "checkpoint_every = 0")
    _check_range(where, "distill", "checkpoint_every", d.checkpoint_every >= 0,
                 f"must be >= 0 (0 = no checkpoints), got {d.checkpoint_every}")
    v = r.eval
    _check_range(where, "eval", "subset", v.subset in EVAL_SUBSETS,
                 f"must be one of {', '.join(EVAL_SUBSETS)}, got {v.subset!r}")
    _check_range(where, "eval", "new_tokens", v.new_tokens >= 1, f"must be >= 1, got {v.new_tokens}")
    q = r.sequence
    for key in ("num_prompts", "prompt_tokens", "new_tokens", "batch_size"):
        _check_range(where, "sequence", key, getattr(q, key) >= 1, f"must be >= 1, got {getattr(q, key)}")
    _check_range(where, "sequence", "temperature", q.temperature >= 0,
                 f"must be >= 0 (0 = greedy), got {q.temperature}")
    _check_range(where, "sequence", "top_k", q.top_k >= 0, f"must be >= 0 (0 = off), got {q.top_k}")
    _check_range(where, "sequence", "top_p", 0.0 < q.top_p <= 1.0, f"must be in (0, 1], got {q.top_p}")
    _check_range(where, "data", "heldout_fraction", 0.0 < data.heldout_fraction <= 0.5,
                 f"must be in (0, 0.5], got {data.heldout_fraction}")
    _check_range(where, "data", "seq_len", data.seq_len >= 8, f"must be >= 8, got {data.seq_len}")
    _check_range(where, "data", "chat_no_repeat_ngram", data.chat_no_repeat_ngram >= 0,
                 f"must be >= 0 (0 = plain greedy answers), got {data.chat_no_repeat_ngram}")
    _check_range(where, "data", "chat_documents", data.chat_documents >= 0,
                 f"must be >= 0 (0 = conversations only), got {data.chat_documents}")
    _check_range(where, "data", "chat_document_tokens", data.chat_document_tokens >= 1,
                 f"must be >= 1, got {data.chat_document_tokens}")
    _check_range(where, "data", "windows", data.windows in WINDOWS,
                 f"must be one of {', '.join(WINDOWS)}, got {data.windows!r}")
    _check_range(where, "export", "prefill_len", e.prefill_len >= 1, f"must be >= 1, got {e.prefill_len}")
    _check_range(where, "export", "max_len", e.max_len > e.prefill_len,
                 f"must be larger than prefill_len ({e.prefill_len}), got {e.max_len}")
    _check_range(where, "export", "cache", e.cache in ("full", "gqa"),
                 f"must be \"full\" or \"gqa\", got {e.cache!r}")
    qz = r.quantize
    _check_range(where, "quantize", "block_size", qz.block_size >= 16 and not qz.block_size & (qz.block_size - 1),
                 f"must be a power of two >= 16, got {qz.block_size}")
    _check_range(where, "quantize", "keep_float", all(isinstance(k, str) and k for k in qz.keep_float),
                 f"must be a list of layer-name parts like [\"lm_head\"], got {qz.keep_float!r}")
    _check_range(where, "quantize", "int4_eight_bit", all(isinstance(k, str) and k for k in qz.int4_eight_bit),
                 f"must be a list of layer-name parts like [\"lm_head\"], got {qz.int4_eight_bit!r}")
    _check_range(where, "quantize", "rounding", qz.rounding in ("gptq", "nearest"),
                 f"must be \"gptq\" or \"nearest\", got {qz.rounding!r}")
    _check_range(where, "bench", "new_tokens", b.new_tokens >= 1, f"must be >= 1, got {b.new_tokens}")
    _check_range(where, "bench", "repeats", b.repeats >= 1, f"must be >= 1, got {b.repeats}")
    _check_range(where, "bench", "new_tokens", e.prefill_len + b.new_tokens <= e.max_len,
                 f"plus [export] prefill_len must fit in max_len ({e.max_len})")
    c = r.check
    c.budgets = load_budgets(c.budgets, where("check", "budgets"))
    for name in c.skip_budgets:
        if name not in BUDGETS:
            raise unknown_key(where("check", "skip_budgets"), str(name), BUDGETS)


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
            raise unknown_key(f"{where} [budgets]", key, BUDGETS)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgeError(f"{at(where + ' [budgets]', key)}: '{key}' must be a number, got {value!r}",
                            f"write it like {key} = 10.0")
        budgets[key] = float(value)
    return budgets


def load_target(target_or_path: str | Path) -> TargetProfile:
    """Read a target profile by target name (`web`) or by path to a profile TOML."""
    p = Path(target_or_path)
    path = p if p.suffix == ".toml" else target_profile_path(str(target_or_path))
    raw = read_toml(path, "target profile")
    keys = {f.name for f in dataclasses.fields(TargetProfile)} - {"path"}
    for key in raw:
        if key not in keys:
            raise unknown_key(str(path), key, keys)
    for key in ("target", "format", "quantization", "runtime"):
        if not isinstance(raw.get(key), str):
            raise EdgeError(f"{path}: '{key}' is missing or not a string", f"add {key} = \"...\" to the profile")
    if raw["target"] not in TARGETS:
        raise EdgeError(f"{path}: unknown target '{raw['target']}'", f"use one of: {', '.join(TARGETS)}")
    defaults = TargetProfile("", "", "", "")
    for key in ("threads", "max_len", "min_ios", "compute", "device"):
        if key in raw:
            coerce(str(path), key, raw[key], getattr(defaults, key))
    if raw.get("device"):
        try:
            load_device(raw["device"])
        except EdgeError as e:
            raise EdgeError(f"{at(str(path), 'device')}: {e.problem}", e.fix) from None
    hf_onnx = raw.get("hf_onnx", {})
    if not isinstance(hf_onnx, dict) or not all(isinstance(v, str) for v in hf_onnx.values()):
        raise EdgeError(f"{at(str(path), 'hf_onnx')}: must be a table of dtype = \"method\"",
                        "write it like hf_onnx = { fp32 = \"fp32\", q8 = \"int8_storage\" }")
    from edgedistil.convert.hf_onnx import check_hf_files

    check_hf_files(hf_onnx, at(str(path), "hf_onnx"))
    if raw.get("module") not in TARGET_MODULES:
        near = difflib.get_close_matches(str(raw.get("module", "")), TARGET_MODULES, n=1)
        problem = (f"{at(str(path), 'module')}: no target module '{raw['module']}' in edgedistil/targets/"
                   if "module" in raw else f"{path}: 'module' is missing")
        raise EdgeError(problem, (f"did you mean '{near[0]}'? " if near else "") +
                        f"name the module that builds it, one of: {', '.join(TARGET_MODULES)}")
    return TargetProfile(
        target=raw["target"], format=raw["format"], quantization=raw["quantization"], runtime=raw["runtime"],
        module=raw["module"],
        threads=raw.get("threads", 1), max_len=raw.get("max_len", 256), min_ios=raw.get("min_ios", 18),
        compute=raw.get("compute", "fp16"), device=raw.get("device", ""), hf_onnx=hf_onnx,
        budgets=load_budgets(raw.get("budgets", {}), str(path)), path=str(path),
    )


def load_budget_file(path: Path | str) -> dict[str, float]:
    """Budgets from a target profile or from a plain TOML holding a [budgets] table."""
    path = Path(path)
    raw = read_toml(path, "budgets file")
    if "budgets" not in raw:
        raise EdgeError(f"{path}: no [budgets] table", "add a [budgets] table, e.g. decode_tokens_per_s_min = 10")
    if "target" in raw:
        return load_target(path).budgets
    extra = set(raw) - {"budgets"}
    if extra:
        raise unknown_key(str(path), sorted(extra)[0], {"budgets"})
    return load_budgets(raw["budgets"], str(path))
