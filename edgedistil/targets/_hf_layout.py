"""The Hugging Face ONNX layout as stages, for any target whose profile names `hf_onnx` (onnx, web): the hf export
of the student, one quantize stage per method the profile's files need, and the folder written into a bundle with
the checks by its real consumers (convert/hf_consumers.py). Not a target module itself (the leading underscore)."""

from __future__ import annotations

from pathlib import Path

from edgedistil.build import Run, export_stage, quantize_stage
from edgedistil.config import TargetProfile
from edgedistil.convert.hf_onnx import DTYPE_FILES, EXPORT, hf_fidelity, hf_graph_sources, write_hf_folder
from edgedistil.errors import EdgeError
from edgedistil.targets import Stage

CACHE = "hf"  # export_stage/quantize_stage layout: export/student-hf/, quantize/<method>-hf/
TEACHER_ONNX = f"export/teacher-{CACHE}/model.onnx"  # the teacher through the same hf export, for the benches
CONSUMER_NEW_TOKENS = 32


def hf_methods(profile: TargetProfile) -> list[str]:
    return [m for m in dict.fromkeys(profile.hf_onnx.values()) if m != EXPORT]


def hf_stages(profile: TargetProfile) -> list[Stage]:
    return [export_stage("student", cache=CACHE), *(quantize_stage(m, cache=CACHE) for m in hf_methods(profile))]


def check_hf_profile(profile: TargetProfile) -> None:
    """A profile that ships the layout names its files, and its quantization makes one of them (the headline)."""
    if not profile.hf_onnx:
        raise EdgeError(f"{profile.path}: the {profile.target} profile names no hf_onnx files",
                        "add hf_onnx = { fp32 = \"fp32\", q8 = \"int8_storage\", q4 = \"int4\" } to the profile")
    if profile.quantization not in profile.hf_onnx.values():
        raise EdgeError(f"{profile.path}: quantization '{profile.quantization}' makes none of the hf_onnx files",
                        f"set quantization to one of: {', '.join(dict.fromkeys(profile.hf_onnx.values()))}")


def headline_dtype(profile: TargetProfile) -> str:
    """The file whose figures the manifest's `fidelity` and `bench` carry: the one the profile's quantization makes."""
    check_hf_profile(profile)  # the stages may be asked for before the target's check has run
    return next(d for d, m in profile.hf_onnx.items() if m == profile.quantization)


def headline_source(profile: TargetProfile) -> str:
    """Where the headline file lies in the run folder (relative): the hf export or its quantize stage's output."""
    method = profile.hf_onnx[headline_dtype(profile)]
    return "export/student-hf/model.onnx" if method == EXPORT else f"quantize/{method}-hf/model.onnx"


def headline_file(profile: TargetProfile) -> str:
    """The headline file's path inside the bundle."""
    return f"onnx/{DTYPE_FILES[headline_dtype(profile)]}"


def hf_stage_names(profile: TargetProfile) -> list[str]:
    """The stages a bundle with the layout reads, for its key."""
    return [s.name for s in hf_stages(profile)]


def consumer_texts(run: Run) -> list[str]:
    """Two held-out prompts of different lengths (the genai batch), the shorter one also Transformers.js'."""
    words = (run.out / "distill" / "heldout.txt").read_text(encoding="utf-8").split()
    return [" ".join(words[:12]), " ".join(words[12:16])]


def write_hf_layout(run: Run, profile: TargetProfile, dest: Path) -> list[str]:
    """Write the layout's files into the bundle folder `dest`; returns the paths written, relative to it."""
    student = run.out / "distill" / "student"
    return write_hf_folder(dest, student, hf_graph_sources(run.out, profile.hf_onnx), run.recipe.export.max_len)


def write_hf_section(run: Run, profile: TargetProfile, dest: Path) -> dict:
    """Write the layout into the bundle folder `dest` (still its temp folder), run onnxruntime-genai, Optimum
    and Transformers.js on it, and return the manifest's `hf_onnx` section."""
    from edgedistil.convert.hf_consumers import check_genai, check_optimum, check_transformersjs

    student = run.out / "distill" / "student"
    written = write_hf_layout(run, profile, dest)
    texts = consumer_texts(run)
    prompt = run.heldout_ids()[: run.recipe.export.prefill_len // 2].tolist()
    run.log(f"hf-onnx: checking {dest.name}/onnx/ with onnxruntime-genai, Optimum and Transformers.js")
    consumers = {
        "onnxruntime-genai": check_genai(dest, student, texts, CONSUMER_NEW_TOKENS),
        "optimum": check_optimum(dest, student, prompt, CONSUMER_NEW_TOKENS, log=run.log),
        "transformers.js": check_transformersjs(dest, student, prompt, texts[1], CONSUMER_NEW_TOKENS, log=run.log),
    }
    for name, c in consumers.items():
        state = ("unavailable: " + c["reason"]) if not c.get("available") else (
            f"ids equal to the references: {c.get('ids_equal')}" if c.get("ran", True) else "failed: " + c["reason"])
        run.log(f"hf-onnx: {name}: {state}")
    return {"layout": "Hugging Face ONNX (Transformers.js, onnxruntime-genai, Optimum)", "written": written,
            "files": hf_fidelity(run.out, profile.hf_onnx), "consumers": consumers}


def report_blocks(manifest: dict) -> list[tuple]:
    """The layout in the report: each onnx/ file's fidelity against the fp32 PyTorch student with its floors, and
    what each consumer did with the folder."""
    hf = manifest.get("hf_onnx") or {}
    files, consumers = hf.get("files") or {}, hf.get("consumers") or {}
    blocks = []
    if files:
        rows = [[f"onnx/{name}", f["dtype"], f"{f['bytes'] / 1e6:.1f}", f"{f['top1_agreement']:.4f}",
                 f"{f['kl_mean']:.2e}", "passed" if f["floors"]["passed"] else "missed: " + "; ".join(
                     f["floors"]["failures"])] for name, f in files.items()]
        blocks += [("p", [f"dist/{manifest.get('target')}, {hf.get('layout', 'Hugging Face ONNX layout')}: each "
                          "file against the fp32 PyTorch student on held-out text, with its precision's floors."]),
                   ("table", ["file", "dtype", "MB", "top-1", "KL", "floors"], rows)]
    rows = []
    for name, c in consumers.items():
        if not c.get("available") or not c.get("ran", True):
            rows.append([name, c.get("runtime", "-"), "no: " + c.get("reason", "unavailable"), "-"])
            continue
        what = ", ".join(f"{d}: {'equal' if r.get('ids_equal') else 'differ'}" for d, r in c["files"].items()) \
            if isinstance(c.get("files"), dict) else ("equal" if c.get("ids_equal") else "differ")
        rows.append([name, c["runtime"], "yes", what])
    if rows:
        blocks += [("p", ["The consumers, run on the folder as shipped; greedy ids against the fp32 PyTorch student "
                          "(fp32) or Python onnxruntime on the same file (quantized)."]),
                   ("table", ["consumer", "runtime", "ran", "greedy ids"], rows)]
    return blocks
