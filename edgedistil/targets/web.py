"""Web browsers through onnxruntime-web (wasm): dist/web/ is the Hugging Face ONNX layout (targets/_hf_layout.py)
plus our JS module and demo page, which run the layout's own file (onnx/model_quantized.onnx, Transformers.js' q8),
so the bundle holds one graph that both run. The teacher goes through the same hf export for the benches: native
ONNX Runtime and the bundle's page in headless Chromium, side by side."""

from __future__ import annotations

from pathlib import Path

from edgedistil.build import Run, bench_prompt, eval_record, export_stage, ort_bench_stage
from edgedistil.config import Recipe, TargetProfile
from edgedistil.errors import read_json
from edgedistil.records import sha256_file, stage_key
from edgedistil.targets import BenchRequest, Stage, Target, fixed_prompt, manifest_figures
from edgedistil.targets._hf_layout import (CACHE, TEACHER_ONNX, check_hf_profile, headline_file, headline_source,
                                           hf_stage_names, hf_stages, write_hf_layout, write_hf_section)
from edgedistil.targets._hf_layout import report_blocks as layout_blocks


def records(run: Run, student: str) -> dict:
    """The records a bundle's manifest is made from (`student`: the shipped file's path in the run folder); the
    benches only when they ran."""
    out = {
        "distill": read_json(run.out / "distill" / "record.json", "distill record"),
        "export": read_json(run.out / "export" / f"student-{CACHE}" / "record.json", "export record"),
        "quantize": read_json(run.out / Path(student).parent / "record.json", "quantize record"),
        "recipe_name": run.recipe.name,
        "eval": eval_record(run),
    }
    for name, folder in (("bench", "bench"), ("bench_web", "bench-web")):
        path = run.out / folder / "record.json"
        if path.is_file():
            out[name] = read_json(path, f"{name} record")
    return out


def stages(profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    threads, student, shipped = profile.threads, headline_source(profile), headline_file(profile)
    upstream = ("distill", *hf_stage_names(profile), f"export[teacher-{CACHE}]", "bench")

    def browser_key(run: Run) -> str:
        return stage_key("bench-web", sha256_file(run.out / student), sha256_file(run.out / TEACHER_ONNX),
                         run.recipe.section("bench"), threads, [run.key_of(n) for n in upstream])

    def browser(run: Run, folder: Path) -> dict:
        """The bundle's own page and JS module in headless Chromium (student, and the fp32 teacher when it fits)."""
        from edgedistil.bench.web import run_bench_web

        b = run.recipe.bench
        layout = lambda dest: {"written": write_hf_layout(run, profile, dest)}  # noqa: E731 (no consumer checks)
        return run_bench_web(records(run, student), shipped, layout, run.out / TEACHER_ONNX, folder,
                             bench_prompt(run), b.new_tokens, b.repeats, threads, log=run.log)

    def bundle_key(run: Run) -> str:
        return stage_key("convert", profile.target, profile.hf_onnx,
                         [run.key_of(n) for n in (*upstream, "bench[web]", "eval")])

    def bundle(run: Run, folder: Path) -> dict:
        from edgedistil.convert.web import run_convert_web

        return dict(run_convert_web(run.out / student, shipped, folder, records(run, student),
                                    lambda dest: write_hf_section(run, profile, dest), log=run.log))

    return [*hf_stages(profile), export_stage("teacher", cache=CACHE),
            ort_bench_stage({"student": student, "teacher": TEACHER_ONNX}, threads),
            Stage("bench[web]", "bench-web", browser_key, browser),
            Stage(f"convert[{profile.target}]", f"dist/{profile.target}", bundle_key, bundle, convert=True)]


def check(profile: TargetProfile, recipe: Recipe) -> None:
    check_hf_profile(profile)  # the bundle is the layout: its page runs the layout's own file


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


def figures(manifest: dict) -> dict[str, tuple[float | None, list | None]]:
    """The shared figures, and our page's decode speed over Transformers.js' on the same q8 file."""
    tjs = manifest.get("transformersjs_bench") or {}
    return {**manifest_figures(manifest),
            "decode_vs_transformersjs": (tjs.get("decode_ours_over_transformersjs"), None)}


def report_blocks(manifest: dict) -> list[tuple]:
    """The layout's blocks, and our page beside Transformers.js on the same file in the same browser."""
    blocks = layout_blocks(manifest)
    tjs, ours = manifest.get("transformersjs_bench") or {}, manifest.get("bench") or {}
    if tjs.get("decode_tokens_per_s") and ours.get("decode_tokens_per_s"):
        rows = [[who, f"{r['decode_tokens_per_s']:.1f}", f"{r['prefill_tokens_per_s']:.0f}", f"{r['ttft_ms']:.0f}",
                 f"{r.get('renderer_peak_rss_mb', r.get('peak_memory_mb')):.0f}"]
                for who, r in (("edgedistil-web.js (the bundle's module)", ours), (tjs["runtime"], tjs))]
        blocks += [("p", [f"The bundle's {tjs['file']} in headless Chromium, wasm, one thread, medians of "
                          f"{tjs['repeats']}: our module decodes at {tjs['decode_ours_over_transformersjs']:.2f}x "
                          f"Transformers.js; greedy ids {'equal' if tjs['ids_equal_to_ours'] else 'differ'}."]),
                   ("table", ["runtime", "decode tok/s", "prefill tok/s", "TTFT ms", "renderer peak MB"], rows)]
    elif tjs.get("reason"):
        blocks.append(("p", [f"Transformers.js beside our module: not measured ({tjs['reason']})."]))
    return blocks


TARGET = Target(stages=stages, bench=bench, verify=verify, check=check, figures=figures,
                report_blocks=report_blocks)
