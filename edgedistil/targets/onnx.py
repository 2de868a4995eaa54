"""Native ONNX Runtime hosts (onnxruntime, onnxruntime-genai and its Kotlin/Objective-C bindings, Optimum): the
student in the Hugging Face ONNX layout, dist/onnx/ (convert/hf_onnx.py), checked by onnxruntime-genai and
Transformers.js, the real consumers, before the folder is renamed into place."""

from __future__ import annotations

from pathlib import Path

from edgedistil import __version__
from edgedistil.build import Run, eval_record, ort_bench_stage
from edgedistil.config import Recipe, TargetProfile
from edgedistil.convert.hf_onnx import DTYPE_FILES
from edgedistil.convert.manifest import evaluation_entry, quality_entry, student_entry
from edgedistil.errors import atomic_dir, read_json, write_json
from edgedistil.records import file_entry, stage_key
from edgedistil.targets import BenchRequest, Stage, Target, fixed_prompt
from edgedistil.targets._hf_layout import (check_hf_profile, headline_dtype, headline_source, hf_stage_names,
                                           hf_stages, write_hf_section)


def stages(profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    headline = headline_source(profile)
    upstream = ["distill", *hf_stage_names(profile), "bench"]

    def bundle_key(run: Run) -> str:
        return stage_key("convert", profile.target, profile.hf_onnx, profile.quantization,
                         [run.key_of(n) for n in (*upstream, "eval")])

    def bundle(run: Run, folder: Path) -> dict:
        with atomic_dir(folder) as tmp:
            manifest = assemble(run, profile, tmp, headline)
        run.log(f"convert[{profile.target}]: {folder} ({sum(f['bytes'] for f in manifest['files']) / 1e6:.1f} MB "
                f"in {len(manifest['files'])} files)")
        return manifest

    return [*hf_stages(profile), ort_bench_stage({"student": headline}, profile.threads),
            Stage(f"convert[{profile.target}]", f"dist/{profile.target}", bundle_key, bundle, convert=True)]


def assemble(run: Run, profile: TargetProfile, dest: Path, headline: str) -> dict:
    hf = write_hf_section(run, profile, dest)
    dtype = headline_dtype(profile)
    file = f"onnx/{DTYPE_FILES[dtype]}"
    export = read_json(run.out / "export" / "student-hf" / "record.json", "hf export record")
    source = read_json(run.out / Path(headline).parent / "record.json", "headline record")
    native = read_json(run.out / "bench" / "record.json", "bench record")["student"]
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
        "bench": {"runtime": native["runtime"], "file": file,
                  **{k: native[k] for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms",
                                            "peak_memory_mb")},
                  "spread": {k: native[k + "_spread"] for k in ("decode_tokens_per_s", "prefill_tokens_per_s",
                                                               "ttft_ms", "peak_memory_mb") if k + "_spread" in native}},
        "teacher_bench": {"value": None, "reason": "the teacher is not exported in this layout yet"},
        "speedup_vs_teacher": None,
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
    """Native ONNX Runtime on the bundle's headline file (or a model file)."""
    from edgedistil.bench.ort import run_bench
    from edgedistil.check.budgets import load_bundle_manifest

    b = req.recipe.bench
    model = Path(req.bundle) / load_bundle_manifest(req.bundle)["quantization"]["file"] if req.bundle else req.model
    prompt = fixed_prompt(req.prompt_tokens or req.recipe.export.prefill_len)
    return run_bench({"student": Path(model)}, prompt, req.recipe.export.prefill_len, b.new_tokens, b.repeats,
                     req.profile.threads, log=req.log)


def verify(bundle: Path, manifest: dict) -> list[dict]:
    from edgedistil.convert.web import verify_onnx

    return verify_onnx(bundle, manifest)


TARGET = Target(stages=stages, bench=bench, verify=verify, check=check)
