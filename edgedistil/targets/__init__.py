"""Targets as modules: each target profile (targets/<name>.toml) names the module here that builds it.

A target module holds one `TARGET = Target(...)`: the stages that turn the distilled student into its bundle, the
`bench` and `verify` verbs for its bundles, and what its manifest and run folders hold for `check` and the report.
The chain (`edgedistil.build`) runs those stages through the stage cache without knowing any target's name.

A stage is Olive's pass made plain: a function from the run folder's artifacts and typed options to a new folder,
with a key that names every input, so the engine (`Run.stage`) reuses it while the key is unchanged.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgedistil.config import TARGETS, Recipe, TargetProfile, load_target

if TYPE_CHECKING:
    from edgedistil.build import Run


@dataclass(frozen=True)
class Stage:
    # the cache name (stages/<name>.json) and log label; the part before "[" is the build.CHAIN step `--force` names
    name: str
    folder: str  # what it writes, relative to the run folder
    key: Callable[[Run], str]  # the hash of its inputs and config; refuses an input that is missing
    run: Callable[[Run, Path], dict]  # writes the folder (atomically) and returns the stage's record
    convert: bool = False  # the `convert` verb runs it: the bundle and the conversions the bundle is copied from
    # not "": an EdgeError from this stage is logged after this text and the chain goes on without it
    on_error: str = ""


@dataclass(frozen=True)
class BenchRequest:
    """What the `bench` verb was asked: one of bundle or model, and the recipe's bench settings."""
    profile: TargetProfile
    recipe: Recipe
    bundle: Path | None
    model: Path | None
    teacher_model: Path | None
    prompt_tokens: int | None
    device: str | None  # None: the host; "" or a serial: a device (only where Target.device_bench)
    benchmark_tool: Path | None
    log: Callable[[str], None]
    emulator: bool = False  # android: the bundle on an emulated ARM64 CPU (QEMU), beside this host


def manifest_figures(manifest: dict) -> dict[str, tuple[float | None, list | None]]:
    """The figures budgets gate, each as (value, spread over repeats or None), where the shared manifest schema
    keeps them: `bench` (with `spread`), `files`, `fidelity`, `quality`, `speedup_vs_teacher`, `quantization`."""
    bench = manifest.get("bench") or {}
    spread = bench.get("spread", {})
    fid, q = manifest.get("fidelity") or {}, manifest.get("quality") or {}
    ev = manifest.get("evaluation") or {}

    def b(key):
        return bench.get(key), spread.get(key)

    return {
        "decode_tokens_per_s": b("decode_tokens_per_s"),
        "prefill_tokens_per_s": b("prefill_tokens_per_s"),
        "ttft_ms": b("ttft_ms"),
        "peak_memory_mb": b("peak_memory_mb"),
        "size_mb": (sum(f["bytes"] for f in manifest["files"]) / 1e6 if manifest.get("files") else None, None),
        "top1_agreement": (fid.get("top1_agreement"), None),
        "kl_mean": (fid.get("kl_mean"), None),
        "quality_retained": (q.get("quality_retained"), None),
        "speedup_vs_teacher": (manifest.get("speedup_vs_teacher"), None),
        "unintended_float_layers": ((manifest.get("quantization") or {}).get("unintended_float_layers"), None),
        "benchmark_margin_kept": (ev.get("benchmark_margin_kept"), None),
        "benchmark_margin_kept_pooled": (ev.get("benchmark_margin_kept_pooled"), None),
        "degenerate_answers": (ev.get("degenerate_answers"), None),
        "rouge_l_vs_teacher": (ev.get("rouge_l_vs_teacher"), None),
    }


def no_check(profile: TargetProfile, recipe: Recipe) -> None:
    return None


def no_artifacts(run: Path) -> list[dict]:
    return []


def no_blocks(manifest: dict) -> list[tuple]:
    return []


@dataclass(frozen=True)
class Target:
    # the stages after distill, in order, for this profile and recipe; the last one writes dist/<target>/
    stages: Callable[[TargetProfile, Recipe], list[Stage]]
    bench: Callable[[BenchRequest], dict]  # the `bench` verb: a bundle or a model file on this target's runtime
    verify: Callable[[Path, dict], list[dict]]  # a bundle's models load and run: one entry per model file
    # refuses a profile and recipe that cannot build, before anything is written (an EdgeError)
    check: Callable[[TargetProfile, Recipe], None] = no_check
    figures: Callable[[dict], dict] = manifest_figures  # what `check` gates, read from this target's manifest
    # the report's extra artifacts from a run folder: {name, mb, fidelity, decode} for the size/speed/fidelity plots
    artifacts: Callable[[Path], list[dict]] = no_artifacts
    # the report's summary blocks ("p", lines) / ("table", head, rows) for figures only this target's manifest has
    report_blocks: Callable[[dict], list[tuple]] = no_blocks
    device_bench: bool = False  # the `bench` verb takes --device (a phone over adb)


def target_of(profile: TargetProfile | str) -> Target:
    """The module that builds a profile (or a target name): `module = "web"` is edgedistil.targets.web."""
    if not isinstance(profile, TargetProfile):
        profile = load_target(profile)
    return importlib.import_module(f"{__name__}.{profile.module}").TARGET


def every_target() -> list[Target]:
    """The modules of every profile in targets/, each once, in the order of config.TARGETS."""
    return list({id(t): t for t in (target_of(name) for name in TARGETS)}.values())


def fixed_prompt(tokens: int) -> list[int]:
    """Token ids for timing alone: ids do not change speed, and a fixed pattern keeps runs comparable without the
    tokenizer."""
    return [(7 * i + 3) % 97 for i in range(tokens)]
