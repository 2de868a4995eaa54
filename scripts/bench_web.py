"""Browser vs native, and which int8 for the browser: a built web bundle in headless Chromium (onnxruntime-web,
wasm) against native onnxruntime on the same files, single-threaded both, plus the browser with 2 wasm threads,
the fp32 student (to separate the int8 kernels' cost from the runtime's) and the student quantized by the other
methods in `--methods` (quantized into the run folder if they are not there yet), each with its fidelity.

    python scripts/bench_web.py --run edgedistil-run        # after `edgedistil build --target web`

Writes docs/results/bench_web.json. Timings on a shared machine are noisy: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from edgedistil.bench.ort import run_bench
from edgedistil.bench.web import bench_web
from edgedistil.build import Run, bench_prompt, quantize_stage
from edgedistil.config import load_recipe
from edgedistil.errors import read_json, write_json

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "edgedistil-run", help="run folder of a web build")
    ap.add_argument("--config", type=Path, default=None, help="the recipe the run was built with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--teacher", action="store_true", help="also run the fp32 teacher (large) in the browser")
    ap.add_argument("--methods", default="int8,int8_wo",
                    help="other quantize methods to run beside the bundle's, comma-separated ('' for none)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "bench_web.json")
    args = ap.parse_args()

    bundle = args.run / "dist" / "web"
    fp32 = args.run / "export" / "student" / "model.onnx"
    teacher = args.run / "export" / "teacher" / "model.onnx"
    run = Run(out=args.run, recipe=load_recipe(args.config))
    prompt = bench_prompt(run)
    chunk = len(prompt)
    others = {"student_fp32": fp32}
    bundle_method = read_json(bundle / "manifest.json", "bundle manifest")["quantization"]["method"]
    quality = {"student": read_json(args.run / "quantize" / bundle_method / "record.json", "quantize record")}
    for method in [m for m in args.methods.split(",") if m and m != bundle_method]:
        quality[f"student_{method}"] = run.stage(quantize_stage(method))
        others[f"student_{method}"] = args.run / "quantize" / method / "model.onnx"
    if args.teacher:
        others["teacher"] = teacher
    t0 = time.perf_counter()
    result = {"command": "python scripts/bench_web.py --run RUN" + (" --teacher" if args.teacher else "") +
              (f" --methods {args.methods}" if args.methods != "int8,int8_wo" else ""),
              "bundle": str(bundle), "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
              "repeats": args.repeats, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    natives = {"student": bundle / "model.onnx", **others}
    result["native_1_thread"] = run_bench(natives, prompt, chunk, args.new_tokens, args.repeats, threads=1)
    for threads in (1, 2):
        result[f"browser_{threads}_thread"] = bench_web(bundle, prompt, args.new_tokens, args.repeats, threads=threads,
                                                         others=others)
    ratios = {}
    for role in natives:
        nat = result["native_1_thread"][role]["decode_tokens_per_s"]
        for threads in (1, 2):
            web = (result[f"browser_{threads}_thread"].get(role) or {}).get("decode_tokens_per_s")
            ratios[f"{role}_browser_{threads}t_over_native_1t"] = round(web / nat, 3) if web else None
    result["decode_ratio"] = ratios
    result["methods"] = {role: {"method": rec["method"], "bytes": rec["bytes"],
                                "top1_agreement": rec["fidelity"]["top1_agreement"],
                                "kl_mean": rec["fidelity"]["kl_mean"]} for role, rec in quality.items()}
    result["bundle_method"] = bundle_method
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    for key in ("browser_1_thread", "browser_2_thread"):  # keep the JSON readable: ids are checked, not listed
        for role in natives:
            r = result[key].get(role) or {}
            for k in ("ids", "reference_ids"):
                r.pop(k, None)
    write_json(args.out, result)
    print(json.dumps({"decode_ratio": ratios, "loadavg": [result["loadavg_1m_before"], result["loadavg_1m_after"]]},
                     indent=2))


if __name__ == "__main__":
    main()
