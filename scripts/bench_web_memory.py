"""Where the browser's memory goes: the Chromium renderer's peak for each of a run's ONNX files and session options.

A web bundle's renderer peaks far above its file (1,358 MB for the default's 70.5 MB q8 file in one build). This
script opens fresh headless Chromium pages on the run's web bundle, each loading one file with one set of
onnxruntime-web session options through the bundle's own module, and reads the renderer's resident peak (VmHWM,
/proc) at three points: the page with onnxruntime-web's wasm instantiated but no model, after the session is
created, and after the generations. Decode speed is timed in the same pages, so memory and speed trade side by side.

    python scripts/bench_web_memory.py RUN

Files: the shipped q8 (int8 weights folded to fp32 at load), the fp32 export, and any of the run's other quantized
HF-layout files (int4 and fp16 from `edgedistil build --target onnx`, int8_wo). Options: the module's (graph
optimization "all"), without ONNX Runtime's memory arena and memory patterns, with graph optimization off (the
int8 weights then stay int8 in the heap and are dequantized at every step), and without weight prepacking. The
q8 and fp32 files also run as ORT-format copies whose initializers stay in the model's bytes.

Run it on idle cores. Writes docs/results/bench_web_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPTIONS = {
    "module default (graph optimization all)": {},
    "no arena, no memory patterns": {"enableCpuMemArena": False, "enableMemPattern": False},
    "graph optimization off": {"graphOptimizationLevel": "disabled"},
    "no weight prepacking": {"extra": {"session": {"disable_prepacking": "1"}}},
}
# ORT-format copies of the q8 and fp32 files (written with optimizations off), whose initializers onnxruntime can
# use in place in the model's bytes instead of copying them out of a parsed protobuf
IN_PLACE = {"use_ort_model_bytes_directly": "1", "use_ort_model_bytes_for_initializers": "1"}
ORT_FORMAT_OPTIONS = {
    "ORT format, initializers in the model bytes": {"extra": {"session": IN_PLACE}},
    "ORT format, initializers in the model bytes, no weight prepacking":
        {"extra": {"session": {**IN_PLACE, "disable_prepacking": "1"}}},
}
PAGE = """<!doctype html><meta charset="utf-8"><body data-state="idle">
<script type="module">
import { load } from "./edgedistil-web.js";
window.edgedistilMemory = { load };
document.body.dataset.state = "ready";
</script>
"""
RUN_JS = """
async ({ model, sessionOptions }) => {
  const lm = await window.edgedistilMemory.load({ model, sessionOptions });
  window.lm = lm;
  return lm.loadMs;
}
"""
GENERATE_JS = """
async ({ ids, newTokens, repeats }) => {
  const runs = [];
  for (let r = 0; r < repeats + 1; r++) {
    const res = await window.lm.generate(ids, { maxNewTokens: newTokens, stopAtEos: false });
    if (r > 0) runs.push(res.timings);  // the first one untimed (V8 tiers wasm up while it runs)
  }
  return { runs, ids: (await window.lm.generate(ids, { maxNewTokens: newTokens, stopAtEos: false })).ids };
}
"""


def ort_format(src: Path, dst: Path) -> Path:
    """`src` saved in ORT format by onnxruntime, with graph optimizations off (the browser runs its own)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def renderer_mb(profile: str) -> dict:
    """VmHWM and VmRSS (MB) of the largest renderer process of the Chromium started with `profile`."""
    from edgedistil.bench.web import chromium_memory

    renderers = [mem for renderer, mem in chromium_memory(profile) if renderer] or [{"VmHWM": 0.0, "VmRSS": 0.0}]
    best = max(renderers, key=lambda mem: mem.get("VmHWM", 0.0))
    return {k: round(best.get(k, 0.0), 1) for k in ("VmHWM", "VmRSS")}


def one_page(pw, chromium, base: str, model: str, options: dict, prompt: list[int], new_tokens: int,
             repeats: int) -> dict:
    from edgedistil.bench import web

    profile = tempfile.mkdtemp(prefix="edgedistil-chromium-")
    try:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=str(chromium), headless=True,
                                                    args=web.CHROMIUM_ARGS, timeout=120_000)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(web.PAGE_TIMEOUT_MS)
            page.goto(base + "memory.html")
            page.wait_for_function("document.body.dataset.state === 'ready'")
            # onnxruntime-web instantiates its wasm at the first session; a session on a 0-byte model would fail,
            # so the baseline is the page with the module imported, before any session
            baseline = renderer_mb(profile)
            load_ms = page.evaluate(RUN_JS, {"model": model, "sessionOptions": options})
            loaded = renderer_mb(profile)
            out = page.evaluate(GENERATE_JS, {"ids": prompt, "newTokens": new_tokens, "repeats": repeats})
            after = renderer_mb(profile)
        finally:
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    decode = [r["decode_tokens_per_s"] for r in out["runs"]]
    return {"renderer_baseline_mb": baseline["VmHWM"], "renderer_peak_after_load_mb": loaded["VmHWM"],
            "renderer_rss_after_load_mb": loaded["VmRSS"], "renderer_peak_mb": after["VmHWM"],
            "renderer_rss_after_generation_mb": after["VmRSS"], "load_ms": round(load_ms, 1),
            "decode_tokens_per_s": round(statistics.median(decode), 1),
            "ttft_ms": round(statistics.median(r["ttft_ms"] for r in out["runs"]), 1), "ids": out["ids"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder with dist/web (edgedistil build --target web)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed generations per page, after one untimed")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_web_memory.json"))
    args = ap.parse_args()

    from edgedistil.bench import web
    from edgedistil.check.budgets import load_bundle_manifest
    from edgedistil.errors import EdgeError
    from edgedistil.records import sha256_file

    run = Path(args.run)
    bundle = run / "dist" / "web"
    try:
        shipped = bundle / load_bundle_manifest(bundle)["graphs"][0]["file"]
    except EdgeError as e:  # one line: the problem and its fix
        raise SystemExit(str(e)) from None
    files = {"q8 (shipped: int8 storage, fp32 compute)": shipped,
             "fp32": run / "export" / "student-hf" / "model.onnx"}
    for method, label in (("int8_wo", "int8 MatMulNBits (int8_wo)"), ("int4", "q4 (MatMulNBits)"),
                          ("fp16", "fp16 storage")):
        path = run / "quantize" / f"{method}-hf" / "model.onnx"
        if path.is_file():
            files[label] = path
    files = {k: v for k, v in files.items() if v.is_file()}
    cases = [(label, option, settings) for label in files for option, settings in OPTIONS.items()]
    prompt = list(range(1000, 1064))
    chromium = web.chromium_path()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgedistil-web-memory-") as tmp:
        for label in list(files)[:2]:  # the q8 and the fp32 file
            files[f"{label}, ORT format"] = ort_format(files[label], Path(tmp) / f"{len(files)}.ort")
            cases += [(f"{label}, ORT format", option, settings) for option, settings in ORT_FORMAT_OPTIONS.items()]
        names = {label: f"m{i}{path.suffix}" for i, (label, path) in enumerate(files.items())}
        hashes = {label: {"path": str(path), "sha256": sha256_file(path)} for label, path in files.items()}
        page = Path(tmp) / "memory.html"
        page.write_text(PAGE)
        # this checkout's module (the bundle's own may predate `sessionOptions`), the bundle's onnxruntime-web
        module = REPO / "edgedistil" / "convert" / "web_runtime" / "edgedistil-web.js"
        with web.serve(bundle, extra={"memory.html": page, "edgedistil-web.js": module,
                                      **{names[k]: v for k, v in files.items()}}) as base, \
                web._import_playwright()() as pw:
            for label, option, settings in cases:
                row = {"file": label, "bytes": files[label].stat().st_size, "options": option,
                       **one_page(pw, chromium, base, names[label], settings, prompt, args.new_tokens, args.repeats)}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "ids"}), flush=True)
    ids = [row.pop("ids") for row in rows]
    for row, got in zip(rows, ids):  # options must not change what a file generates
        first = next(i for i, r in enumerate(rows) if r["file"] == row["file"])
        row["ids_equal_to_module_default"] = got == ids[first]
    record = {"command": f"python scripts/bench_web_memory.py {args.run}", "what": __doc__.split("\n\n")[0],
              "browser": f"Chromium {web.chromium_version(chromium)} (headless)", "chromium_args": web.CHROMIUM_ARGS,
              "threads": 1, "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "loadavg_1m_before": round(load_before, 2),
              "loadavg_1m_after": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d"),
              "files": hashes,
              "session_options": {**OPTIONS, **ORT_FORMAT_OPTIONS}, "rows": rows}
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
