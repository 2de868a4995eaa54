"""iPhones through Core ML: the PyTorch student converted straight to .mlpackage variants (no ONNX stages), each
checked on Linux by reading the package back and running its MIL program with coremltools' op implementations;
dist/ios/ ships the profile's variant with a Swift bench package. Speed needs a Mac."""

from __future__ import annotations

from pathlib import Path

from edgedistil.build import Run, eval_record
from edgedistil.config import Recipe, TargetProfile
from edgedistil.errors import EdgeError, read_json
from edgedistil.records import stage_key
from edgedistil.targets import BenchRequest, Stage, Target, fixed_prompt


def options(profile: TargetProfile, recipe: Recipe):
    from edgedistil.convert.ios import IosOptions

    e = recipe.export
    return IosOptions(min_ios=profile.min_ios, bundle_variant=profile.quantization, compute=profile.compute,
                      prefill_len=e.prefill_len, max_len=e.max_len).check()


def check(profile: TargetProfile, recipe: Recipe) -> None:
    options(profile, recipe)  # an unsupported min_ios, compute or variant fails now, not after distillation


def stages(profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    opts = options(profile, recipe)

    def coreml_key(run: Run) -> str:
        student = run.out / "distill" / "student"
        if not (student / "config.json").is_file():
            raise EdgeError(f"{student} has no config.json", f"run `edgedistil distill --out {run.out}` first")
        # the variants and how they are built; which one ships is not part of it
        return stage_key("coreml", opts.stage_config(), run.key_of("distill"))

    def coreml(run: Run, folder: Path) -> dict:
        """Core ML variants of the PyTorch student, each checked on Linux (coreml/)."""
        from edgedistil.convert.ios import run_coreml

        return run_coreml(run.out / "distill" / "student", folder, run.heldout_ids(), opts, log=run.log)

    def bundle_key(run: Run) -> str:
        return stage_key("convert", profile.target, run.key_of("convert[coreml]"), run.key_of("distill"),
                         opts.bundle_variant, run.key_of("eval"))

    def bundle(run: Run, folder: Path) -> dict:
        from edgedistil.convert.ios import run_convert_ios

        records = {"coreml": run.record_of("convert[coreml]"),
                   "distill": read_json(run.out / "distill" / "record.json", "distill record"),
                   "eval": eval_record(run),
                   "recipe_name": run.recipe.name}
        return run_convert_ios(run.out / "coreml", run.out / "distill" / "student", folder, records,
                               opts.bundle_variant, log=run.log)

    return [Stage("convert[coreml]", "coreml", coreml_key, coreml, convert=True),
            Stage(f"convert[{profile.target}]", f"dist/{profile.target}", bundle_key, bundle, convert=True)]


def bench(req: BenchRequest) -> dict:
    """Core ML on a Mac, per compute unit; on Linux require_macos says so and the exit code is non-zero."""
    from edgedistil.bench.coreml import run_bench_coreml
    from edgedistil.check.budgets import load_bundle_manifest
    from edgedistil.runtimes.coreml import require_macos

    require_macos()
    if req.bundle:
        manifest = load_bundle_manifest(req.bundle)
        package, prefill_len = Path(req.bundle) / manifest["graphs"][0]["file"], manifest["runtime"]["prefill_len"]
    else:
        package, prefill_len = Path(req.model), req.recipe.export.prefill_len
    b = req.recipe.bench
    return run_bench_coreml(package, fixed_prompt(req.prompt_tokens or prefill_len), prefill_len, b.new_tokens,
                            b.repeats, log=req.log)


def verify(bundle: Path, manifest: dict) -> list[dict]:
    from edgedistil.convert.ios import verify_package

    return verify_package(bundle, manifest)


TARGET = Target(stages=stages, bench=bench, verify=verify, check=check)
