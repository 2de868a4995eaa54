"""Native ONNX Runtime hosts (onnxruntime, onnxruntime-genai and its Kotlin/Objective-C bindings, Optimum): the
student in the Hugging Face ONNX layout, dist/onnx/ (convert/hf_onnx.py), checked by onnxruntime-genai, Optimum and
Transformers.js, the real consumers, before the folder is renamed into place. The teacher goes through the same hf
export and is benched beside the student in native ONNX Runtime, so the manifest carries the speedup."""

from __future__ import annotations

from pathlib import Path

from edgedistil import __version__
from edgedistil.build import Run, eval_record, export_stage, ort_bench_stage
from edgedistil.config import Recipe, TargetProfile
from edgedistil.convert.hf_onnx import DTYPE_FILES
from edgedistil.convert.web import native_entry
from edgedistil.convert.manifest import evaluation_entry, quality_entry, student_entry
from edgedistil.errors import atomic_dir, read_json, write_json
from edgedistil.records import file_entry, stage_key
from edgedistil.targets import BenchRequest, Stage, Target, fixed_prompt
from edgedistil.targets._hf_layout import (CACHE, TEACHER_ONNX, check_hf_profile, headline_dtype, headline_source,
                                           hf_stage_names, hf_stages, report_blocks, write_hf_section)


def stages(profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    headline = headline_source(profile)
    upstream = ["distill", *hf_stage_names(profile), f"export[teacher-{CACHE}]", "bench"]

    def bundle_key(run: Run) -> str:
        return stage_key("convert", profile.target, profile.hf_onnx, profile.quantization,
                         [run.key_of(n) for n in (*upstream, "eval")])

    def bundle(run: Run, folder: Path) -> dict:
        with atomic_dir(folder) as tmp:
            manifest = assemble(run, profile, tmp, headline)
        run.log(f"convert[{profile.target}]: {folder} ({sum(f['bytes'] for f in manifest['files']) / 1e6:.1f} MB "
                f"in {len(manifest['files'])} files)")
        return manifest

    return [*hf_stages(profile), export_stage("teacher", cache=CACHE),
            ort_bench_stage({"student": headline, "teacher": TEACHER_ONNX}, profile.threads),
            Stage(f"convert[{profile.target}]", f"dist/{profile.target}", bundle_key, bundle, convert=True)]


def assemble(run: Run, profile: TargetProfile, dest: Path, headline: str) -> dict:
    hf = write_hf_section(run, profile, dest)
    dtype = headline_dtype(profile)
    file = f"onnx/{DTYPE_FILES[dtype]}"
    export = read_json(run.out / "export" / "student-hf" / "record.json", "hf export record")
    source = read_json(run.out / Path(headline).parent / "record.json", "headline record")
    native = read_json(run.out / "bench" / "record.json", "bench record")
    distill = read_json(run.out / "distill" / "record.json", "distill record")
    fid = hf["files"][DTYPE_FILES[dtype]]
    manifest = {
        "schema_version": 1, "target": profile.target, "name": f"{run.recipe.name}-student",
        "created_by": f"edgedistil {__version__}",
        "runtime": {"name": profile.runtime, "layout": hf["layout"]},
        "files": [],
        "graphs": [{**g, "file": f"onnx/{DTYPE_FILES[d]}"} for d in profile.hf_onnx for g in export["graphs"]],
        "kv_cache": export["kv_cache"],
        "tokenizer": "tokenizer.json",
        "quantization": {"method": profile.quantization, "dtype": dtype, "file": file,
                         "scheme": source.get("scheme", "fp32 export"),
                         "unintended_float_layers": (source.get("precision") or {}).get("unintended_float_layers")},
        "fidelity": {**fid, "meets_floors": fid["floors"]["passed"]},
        "bench": {**native_entry(native["student"]), "file": file},
        # the teacher's fp32 hf export: same-precision speed for the profile's q8 file, whose int8_storage weights
        # are computed in fp32
        "teacher_bench": {**native_entry(native["teacher"]), "file": TEACHER_ONNX},
        "speedup_vs_teacher": native["speedup_vs_teacher"],
        "hf_onnx": hf,
        "quality": quality_entry(distill),
        "evaluation": evaluation_entry(eval_record(run)),
        "student": student_entry(distill),
    }
    manifest["files"] = [file_entry(p, dest) for p in sorted(dest.rglob("*")) if p.is_file()]
    write_json(dest / "manifest.json", manifest)
    return manifest


def check(profile: TargetProfile, recipe: Recipe) -> None:
    check_hf_profile(profile)


def bench(req: BenchRequest) -> dict:
    """Native ONNX Runtime on the bundle's headline file (or a model file), and the teacher's file beside it."""
    from edgedistil.bench.ort import run_bench
    from edgedistil.check.budgets import load_bundle_manifest

    b = req.recipe.bench
    model = Path(req.bundle) / load_bundle_manifest(req.bundle)["quantization"]["file"] if req.bundle else req.model
    models = {"student": Path(model), **({"teacher": Path(req.teacher_model)} if req.teacher_model else {})}
    prompt = fixed_prompt(req.prompt_tokens or req.recipe.export.prefill_len)
    return run_bench(models, prompt, req.recipe.export.prefill_len, b.new_tokens, b.repeats, req.profile.threads,
                     log=req.log)


def verify(bundle: Path, manifest: dict) -> list[dict]:
    from edgedistil.convert.web import verify_onnx

    return verify_onnx(bundle, manifest)


TARGET = Target(stages=stages, bench=bench, verify=verify, check=check, report_blocks=report_blocks)
