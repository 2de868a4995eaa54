"""Transformers.js' own speed on a Hugging Face ONNX folder, in headless Chromium (wasm, one thread), offline.

The timing a web developer gets from `pipeline('text-generation')` / `model.generate()`: a streamer records when
each token arrives, so the figures are measured the way edgedistil-web.js measures its own (bench/web.py):
time to first token from the call, prefill tok/s = prompt tokens / TTFT, decode tok/s over the tokens after the
first. One fresh browser per file, so each file's renderer peak is its own. The first generate warms up and is
not counted (bench/web.py's WARMUPS); the medians of `repeats` runs are reported with their spread.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgedistil.bench.ort import medians
from edgedistil.convert.hf_onnx import DTYPE_FILES

TIMING_JS = """
async ({ dtype, prompt, newTokens, repeats, warmups }) => {
  const { env, pipeline, Tensor } = await import("/vendor/transformers.min.js");
  env.allowLocalModels = true;
  env.allowRemoteModels = false;
  env.localModelPath = "/models/";
  env.useBrowserCache = false;
  env.backends.onnx.wasm.wasmPaths = "/vendor/ort/";
  env.backends.onnx.wasm.numThreads = 1;
  const t0 = performance.now();
  const generator = await pipeline("text-generation", "student", { dtype, device: "wasm" });
  const loadMs = performance.now() - t0;
  const input_ids = new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]);
  const runs = [];
  let ids = null;
  for (let r = 0; r < warmups + repeats; r++) {
    const stamps = [];
    // generate() puts the prompt first, then each new token: the stamps after the first are the tokens
    const streamer = { put: () => stamps.push(performance.now()), end: () => {} };
    const start = performance.now();
    const seq = await generator.model.generate({ input_ids, max_new_tokens: newTokens, min_new_tokens: newTokens,
                                                 do_sample: false, streamer });
    const tokens = stamps.slice(1);
    ids = seq.tolist()[0].slice(prompt.length).map(Number);
    if (r < warmups) continue;
    const ttft = tokens[0] - start;
    runs.push({ ttft_ms: ttft, prefill_tokens_per_s: prompt.length * 1000 / ttft,
                decode_tokens_per_s: (tokens.length - 1) * 1000 / (tokens[tokens.length - 1] - tokens[0]) });
  }
  await generator.dispose();
  return { version: env.version, loadMs, ids, runs };
}
"""
def bench_transformersjs(folder: Path, prompt: list[int], new_tokens: int, repeats: int,
                         added: dict[str, Path] | None = None, log=print) -> dict:
    """{dtype: timings, renderer peak, ids} for each onnx/ file of `folder`, and for `added` ({dtype: file}:
    another precision of the same graph, served under that dtype's name beside the folder's own files)."""
    from edgedistil.bench.web import (CHROMIUM_ARGS, PAGE_TIMEOUT_MS, WARMUPS, MemorySampler, _import_playwright,
                                      chromium_path, chromium_version, serve)
    from edgedistil.convert.hf_consumers import TJS_VENDOR, transformersjs_runtime

    folder = Path(folder)
    chromium, sync_playwright = chromium_path(), _import_playwright()
    node_modules = transformersjs_runtime(log)
    added = {d: Path(p) for d, p in (added or {}).items()}
    dtypes = [d for d, name in DTYPE_FILES.items() if (folder / "onnx" / name).is_file() or d in added]
    extra = {rel: node_modules / src for rel, src in TJS_VENDOR.items()}
    extra.update({f"models/student/{p.relative_to(folder)}": p for p in folder.rglob("*") if p.is_file()})
    extra.update({f"models/student/onnx/{DTYPE_FILES[d]}": p for d, p in added.items()})
    out = {"runtime": None, "browser": f"Chromium {chromium_version(chromium)} (headless)", "threads": 1,
           "prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": repeats, "files": {}}
    with tempfile.TemporaryDirectory(prefix="edgedistil-tjs-bench-") as root, \
            serve(Path(root), extra=extra) as base, sync_playwright() as pw:
        (Path(root) / "index.html").write_text("<!doctype html><title>Transformers.js bench</title><body></body>")
        for dtype in dtypes:
            profile = tempfile.mkdtemp(prefix="edgedistil-chromium-")
            try:
                with MemorySampler(profile) as mem:
                    ctx = pw.chromium.launch_persistent_context(profile, executable_path=str(chromium),
                                                                headless=True, args=CHROMIUM_ARGS, timeout=120_000)
                    try:
                        page = ctx.pages[0] if ctx.pages else ctx.new_page()
                        page.set_default_timeout(PAGE_TIMEOUT_MS)
                        page.goto(base + "index.html")
                        raw = page.evaluate(TIMING_JS, {"dtype": dtype, "prompt": prompt, "newTokens": new_tokens,
                                                        "repeats": repeats, "warmups": WARMUPS})
                    finally:
                        mem.sample()
                        ctx.close()
            finally:
                shutil.rmtree(profile, ignore_errors=True)
            out["runtime"] = f"Transformers.js {raw['version']} (onnxruntime-web wasm, 1 thread)"
            entry = {"file": f"onnx/{DTYPE_FILES[dtype]}", "load_ms": round(raw["loadMs"], 1), "ids": raw["ids"],
                     "renderer_peak_rss_mb": round(mem.renderer_peak_mb, 1),
                     "chromium_peak_rss_mb": round(mem.total_peak_mb, 1)}
            out["files"][dtype] = entry = entry | medians(raw["runs"])
            log(f"bench-transformersjs[{dtype}]: decode {entry['decode_tokens_per_s']:.1f} tok/s, TTFT "
                f"{entry['ttft_ms']:.0f} ms, renderer peak {entry['renderer_peak_rss_mb']:.0f} MB")
    return out
