"""Our browser bundle against Transformers.js, on the same student files, side by side in one run (issue 20).

    python scripts/bench_transformersjs.py --run edgedistil-run     # after `edgedistil build --target web`

For each precision the web build has (the bundle's int8 file as Transformers.js' q8, the fp32 export as its
fp32, and the int4 file as its q4 when `build --target onnx` ran in the same run folder), both runtimes run the same ONNX file in headless Chromium, wasm, one thread, offline: edgedistil-web.js
(our page, bench/web.py) and Transformers.js' `model.generate()` (bench/transformersjs.py). Recorded: decode and
prefill tok/s, TTFT and renderer peak of each, their ratio, and whether both produce the same greedy ids.
Writes docs/results/bench_transformersjs.json (or --out). Timings on a shared machine are noisy: the load average
is recorded, and every figure is a median of --repeats runs after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from edgedistil.bench.ort import METRICS
from edgedistil.bench.transformersjs import bench_transformersjs
from edgedistil.bench.web import bench_web
from edgedistil.build import Run, bench_prompt
from edgedistil.config import load_recipe
from edgedistil.errors import EdgeError, write_json

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "edgedistil-run", help="run folder of a web build")
    ap.add_argument("--config", type=Path, default=None, help="the recipe the run was built with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "bench_transformersjs.json")
    args = ap.parse_args()

    bundle = args.run / "dist" / "web"
    fp32 = args.run / "export" / "student-hf" / "model.onnx"
    for path, what in ((bundle / "manifest.json", "a web bundle"), (fp32, "the fp32 HF-layout export")):
        if not path.is_file():
            raise SystemExit(EdgeError(f"{path} is missing: --run must be a finished web build with {what}",
                                       "run `edgedistil build --target web --out RUN` first").line())
    run = Run(out=args.run, recipe=load_recipe(args.config))
    prompt = bench_prompt(run)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    others = {"fp32": fp32}
    q4 = args.run / "quantize" / "int4-hf" / "model.onnx"  # made when `build --target onnx` ran in the same folder
    if q4.is_file():
        others["q4"] = q4
    ours = bench_web(bundle, prompt, args.new_tokens, args.repeats, threads=1, others=others)
    theirs = bench_transformersjs(bundle, prompt, args.new_tokens, args.repeats, added=others)
    pairs = {"q8": ours["student"], **{dtype: ours[dtype] for dtype in others}}
    side_by_side = {}
    for dtype, mine in pairs.items():
        tjs = theirs["files"].get(dtype)
        if not tjs or not mine.get("decode_tokens_per_s"):
            continue
        side_by_side[dtype] = {
            "file": mine["file"],
            "edgedistil_web": {m: mine[m] for m in METRICS} | {"renderer_peak_rss_mb": mine["renderer_peak_rss_mb"]},
            "transformersjs": {m: tjs[m] for m in METRICS} | {"renderer_peak_rss_mb": tjs["renderer_peak_rss_mb"]},
            "decode_ratio_ours_over_transformersjs": round(mine["decode_tokens_per_s"] / tjs["decode_tokens_per_s"], 3),
            "ttft_ratio_ours_over_transformersjs": round(mine["ttft_ms"] / tjs["ttft_ms"], 3),
            "same_greedy_ids": mine["ids"] == tjs["ids"],
        }
    result = {"command": "python scripts/bench_transformersjs.py --run RUN", "bundle": str(bundle),
              "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "edgedistil_web_runtime": ours["student"]["runtime"], "transformersjs_runtime": theirs["runtime"],
              "browser": ours["browser"], "side_by_side": side_by_side,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.out, result)
    for dtype, row in side_by_side.items():
        print(f"{dtype}: ours {row['edgedistil_web']['decode_tokens_per_s']:.1f} tok/s, Transformers.js "
              f"{row['transformersjs']['decode_tokens_per_s']:.1f} tok/s "
              f"({row['decode_ratio_ours_over_transformersjs']:.2f}x); same ids: {row['same_greedy_ids']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
