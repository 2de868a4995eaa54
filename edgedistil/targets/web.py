"""Web browsers through onnxruntime-web (wasm): the ONNX export of student and teacher, the profile's quantization,
native ONNX Runtime and headless-Chromium benches, and dist/web/ (model, tokenizer, JS module, demo page)."""

from __future__ import annotations

from pathlib import Path

from edgedistil.build import Run, bench_prompt, eval_record, export_stage, ort_bench_stage, quantize_stage
from edgedistil.config import Recipe, TargetProfile
from edgedistil.errors import EdgeError, read_json
from edgedistil.records import sha256_file, stage_key
from edgedistil.targets import BenchRequest, Stage, Target, fixed_prompt
from edgedistil.targets._hf_layout import hf_stage_names, hf_stages, write_hf_section

TEACHER_ONNX = "export/teacher/model.onnx"


def records(run: Run, method: str) -> dict:
    """The records a bundle's manifest is made from; the benches only when they ran."""
    out = {
        "distill": read_json(run.out / "distill" / "record.json", "distill record"),
        "export": read_json(run.out / "export" / "student" / "record.json", "export record"),
        "quantize": read_json(run.out / "quantize" / method / "record.json", "quantize record"),
        "recipe_name": run.recipe.name,
        "eval": eval_record(run),
    }
    for name, folder in (("bench", "bench"), ("bench_web", "bench-web")):
        path = run.out / folder / "record.json"
        if path.is_file():
            out[name] = read_json(path, f"{name} record")
    return out


def stages(profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    method, threads = profile.quantization, profile.threads
    student = f"quantize/{method}/model.onnx"
    upstream = ("distill", "export[student]", f"quantize[{method}]", "bench")

    def browser_key(run: Run) -> str:
        return stage_key("bench-web", sha256_file(run.out / student), sha256_file(run.out / TEACHER_ONNX),
                         run.recipe.section("bench"), threads, [run.key_of(n) for n in upstream])

    def browser(run: Run, folder: Path) -> dict:
        """The bundle's own page and JS module in headless Chromium (student, and the fp32 teacher when it fits)."""
        from edgedistil.bench.web import run_bench_web

        b = run.recipe.bench
        return run_bench_web(records(run, method), run.out / student, run.out / "distill" / "student",
                             run.out / TEACHER_ONNX, folder, bench_prompt(run), b.new_tokens, b.repeats, threads,
                             log=run.log)

    def bundle_key(run: Run) -> str:
        hf = [profile.hf_onnx, [run.key_of(n) for n in hf_stage_names(profile)]] if profile.hf_onnx else []
        return stage_key("convert", profile.target, [run.key_of(n) for n in (*upstream, "bench[web]", "eval")], *hf)

    def bundle(run: Run, folder: Path) -> dict:
        from edgedistil.convert.web import run_convert_web

        hf = (lambda dest: write_hf_section(run, profile, dest)) if profile.hf_onnx else None
        return dict(run_convert_web(run.out / student, run.out / "distill" / "student", folder, records(run, method),
                                    log=run.log, hf_section=hf))

    return [export_stage("student"), export_stage("teacher"), quantize_stage(method),
            *(hf_stages(profile) if profile.hf_onnx else []),
            ort_bench_stage({"student": student, "teacher": TEACHER_ONNX}, threads),
            Stage("bench[web]", "bench-web", browser_key, browser),
            Stage(f"convert[{profile.target}]", f"dist/{profile.target}", bundle_key, bundle, convert=True)]


def check(profile: TargetProfile, recipe: Recipe) -> None:
    if recipe.export.cache != "full":
        # the bundle's JS and manifest speak the whole-cache I/O; the gqa layout is for ONNX Runtime hosts
        raise EdgeError(f"[export] cache = \"{recipe.export.cache}\" is not the web bundle's cache layout",
                        "use cache = \"full\" for --target web (gqa is for native ONNX Runtime)")


def bench(req: BenchRequest) -> dict:
    """Native ONNX Runtime on the model file; with a bundle, its own page in headless Chromium beside it."""
    from edgedistil.bench.ort import run_bench
    from edgedistil.check.budgets import load_bundle_manifest

    b = req.recipe.bench
    if req.bundle:
        graph = load_bundle_manifest(req.bundle)["graphs"][0]
        model, prefill_len = Path(req.bundle) / graph["file"], graph["tokens_per_call"]
    else:
        model, prefill_len = Path(req.model), req.recipe.export.prefill_len
    models = {"student": model, **({"teacher": Path(req.teacher_model)} if req.teacher_model else {})}
    prompt = fixed_prompt(req.prompt_tokens or prefill_len)
    record = run_bench(models, prompt, prefill_len, b.new_tokens, b.repeats, req.profile.threads, log=req.log)
    if not req.bundle:
        req.log("bench: --model runs a bare model file in native onnxruntime only; pass --bundle DIR to run it in "
                "Chromium")
        return record
    from edgedistil.bench.web import bench_web, compare_with_native

    return compare_with_native(bench_web(req.bundle, prompt, b.new_tokens, b.repeats, req.profile.threads,
                                         teacher=req.teacher_model, log=req.log), record)


def verify(bundle: Path, manifest: dict) -> list[dict]:
    from edgedistil.convert.web import verify_onnx

    return verify_onnx(bundle, manifest)


TARGET = Target(stages=stages, bench=bench, verify=verify, check=check)
