"""Native ONNX Runtime hosts (onnxruntime, onnxruntime-genai and its Kotlin/Objective-C bindings, Optimum): the
student in the Hugging Face ONNX layout, dist/onnx/ (convert/hf_onnx.py), checked by onnxruntime-genai, Optimum and
Transformers.js, the real consumers, before the folder is renamed into place. The teacher goes through the same hf
export and is benched beside the student in native ONNX Runtime, so the manifest carries the speedup."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgedistil import __version__
from edgedistil.build import Run, eval_record, export_stage, ort_bench_stage
from edgedistil.config import Recipe, TargetProfile
from edgedistil.convert.hf_onnx import DTYPE_FILES
from edgedistil.convert.web import native_entry
from edgedistil.convert.manifest import evaluation_entry, quality_entry, student_entry
from edgedistil.errors import atomic_dir, read_json, write_json
from edgedistil.records import file_entry, stage_key
from edgedistil.targets import BenchRequest, Stage, Target, fixed_prompt, manifest_figures
from edgedistil.targets._hf_layout import (CACHE, TEACHER_ONNX, check_hf_profile, headline_dtype, headline_source,
                                           hf_stage_names, hf_stages, write_hf_layout, write_hf_section)
from edgedistil.targets._hf_layout import report_blocks as layout_blocks


def stages(profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    headline = headline_source(profile)
    upstream = ["distill", *hf_stage_names(profile), f"export[teacher-{CACHE}]", "bench"]

    def bundle_key(run: Run) -> str:
        return stage_key("convert", profile.target, profile.hf_onnx, profile.quantization,
                         [run.key_of(n) for n in (*upstream, "eval", *(["bench[genai]"] if genai_dtypes(profile)
                                                                         else []))])

    def bundle(run: Run, folder: Path) -> dict:
        with atomic_dir(folder) as tmp:
            manifest = assemble(run, profile, tmp, headline)
        run.log(f"convert[{profile.target}]: {folder} ({sum(f['bytes'] for f in manifest['files']) / 1e6:.1f} MB "
                f"in {len(manifest['files'])} files)")
        return manifest

    return [*hf_stages(profile), export_stage("teacher", cache=CACHE),
            ort_bench_stage({"student": headline, "teacher": TEACHER_ONNX}, profile.threads),
            *([genai_stage(profile)] if genai_dtypes(profile) else []),
            Stage(f"convert[{profile.target}]", f"dist/{profile.target}", bundle_key, bundle, convert=True)]


def genai_dtypes(profile: TargetProfile) -> list[str]:
    """The folder's files genai's model builder also makes from the student (fp32, and q4 as its int4)."""
    from edgedistil.bench.genai import BUILDER_PRECISION

    return [d for d in BUILDER_PRECISION if d in profile.hf_onnx]


def genai_stage(profile: TargetProfile) -> Stage:
    """onnxruntime-genai on the folder as it will ship, beside genai on its own builder's export of the student."""
    dtypes = genai_dtypes(profile)

    def key(run: Run) -> str:
        return stage_key("bench-genai", dtypes, run.recipe.section("bench"),
                         [run.key_of(n) for n in ("distill", *hf_stage_names(profile))])

    def go(run: Run, folder: Path) -> dict:
        from edgedistil.bench.genai import genai_beside_builder
        from edgedistil.sources.cache import cache_dir

        b = run.recipe.bench
        with tempfile.TemporaryDirectory(prefix="edgedistil-genai-stage-") as tmp:
            staged = Path(tmp) / "onnx"
            staged.mkdir()
            write_hf_layout(run, profile, staged)
            record = genai_beside_builder(staged, run.out / "distill" / "student", dtypes,
                                          cache_dir() / "bench-genai", run.recipe.export.prefill_len, b.new_tokens,
                                          b.repeats, log=run.log)
        with atomic_dir(folder) as out:
            write_json(out / "record.json", {"stage": "bench-genai", **record})
        return record

    return Stage("bench[genai]", "bench-genai", key, go)


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
        "genai_bench": genai_entry(run),
        "hf_onnx": hf,
        "quality": quality_entry(distill),
        "evaluation": evaluation_entry(eval_record(run)),
        "student": student_entry(distill),
    }
    manifest["files"] = [file_entry(p, dest) for p in sorted(dest.rglob("*")) if p.is_file()]
    write_json(dest / "manifest.json", manifest)
    return manifest


def genai_entry(run: Run) -> dict:
    """The bench[genai] stage's figures per precision: genai on our file and on its builder's export, and the ratio."""
    path = run.out / "bench-genai" / "record.json"
    if not path.is_file():
        return {"value": None, "reason": "the profile ships no file genai's builder also makes (fp32, q4)"}
    record = read_json(path, "genai bench record")
    keys = ("decode_tokens_per_s", "ttft_ms", "bytes", "runtime", "reason")
    return {"threads": record["threads"], "prompt_tokens": record["prompt_tokens"], "new_tokens": record["new_tokens"],
            "rounds": record["rounds"],
            "precisions": {d: {"file": p["file"], "builder_precision": p["builder_precision"],
                               "ours": {k: p["ours"][k] for k in keys if k in p["ours"]},
                               "builder": {k: p["builder"][k] for k in keys if k in p["builder"]},
                               "decode_ours_over_builder": p["decode_ours_over_builder"],
                               "same_first_16_ids": p["same_first_16_ids"]}
                           for d, p in record["precisions"].items()}}


def figures(manifest: dict) -> dict[str, tuple[float | None, list | None]]:
    """The shared figures, and genai's decode speed on our folder over its own export's, per precision."""
    precisions = (manifest.get("genai_bench") or {}).get("precisions") or {}
    return {**manifest_figures(manifest),
            **{f"genai_{d}_vs_builder": ((precisions.get(d) or {}).get("decode_ours_over_builder"), None)
               for d in ("fp32", "q4")}}


def report_blocks(manifest: dict) -> list[tuple]:
    """The layout's blocks, and genai on our folder beside genai on its own builder's export."""
    blocks = layout_blocks(manifest)
    g = manifest.get("genai_bench") or {}
    rows = []
    for d, p in (g.get("precisions") or {}).items():
        ours, builder = p["ours"], p["builder"]
        speed = lambda m: f"{m['decode_tokens_per_s']:.1f}" if m.get("decode_tokens_per_s") else "-"  # noqa: E731
        ratio = p["decode_ours_over_builder"]
        rows.append([f"{p['file']} / builder {p['builder_precision']}", speed(ours), speed(builder),
                     f"{ratio:.2f}x" if ratio else "-", {True: "yes", False: "no", None: "-"}[p["same_first_16_ids"]]])
    if rows:
        blocks += [("p", [f"onnxruntime-genai on this folder and on its model builder's export of the same student "
                          f"(one thread, greedy, {g['prompt_tokens']}-token prompt, median of {g['rounds']} "
                          "rounds)."]),
                   ("table", ["file / builder precision", "genai on ours, decode tok/s", "genai on its export",
                              "ours / its", "same first 16 ids"], rows)]
    return blocks


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


TARGET = Target(stages=stages, bench=bench, verify=verify, check=check, figures=figures,
                report_blocks=report_blocks)
