"""Where a decode step's time goes in ONNX Runtime: op types by share of the step, with ORT's own profiler.

    python scripts/profile_ort_decode.py MODEL.onnx [MODEL2.onnx ...] [--steps 64] [--json PATH]

Each model (an edgedistil export or quantization, either cache layout) runs a 64-token prefill, then `--steps`
decode steps with the cache fed back, 1 thread, spinning off, graph optimization ALL, with profiling on; only the
decode steps are counted. Per op type: total microseconds, share of the kernel time, and node count per step.
The profiler adds its own overhead, so use the shares, not the absolute times; speed figures come from
scripts/bench_runtime.py. Writes docs/results/ort_decode_profile.json (or --json).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def profile(path: Path, steps: int) -> dict:
    import onnxruntime as ort

    from edgedistil.runtimes.ort import OrtLM, session_options

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(1)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        lm = OrtLM(path)
        lm.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        _, cache = lm.step(list(range(1, 65)), 0, lm.empty_cache())
        for i in range(steps):
            _, cache = lm.step([5], 64 + i, cache)
        events = json.loads(Path(lm.session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    decode_from = runs[1]["ts"] if len(runs) > 1 else 0  # the first run is the prefill
    by_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= decode_from:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] += e["dur"]
            count[op] += 1
    total = sum(by_op.values())
    run_us = sum(r["dur"] for r in runs[1:])
    return {"model": str(path), "bytes": path.stat().st_size, "decode_steps": steps,
            "kernel_us_per_step": round(total / steps, 1), "run_us_per_step": round(run_us / max(1, len(runs) - 1), 1),
            "ops": {op: {"share": round(us / total, 4), "us_per_step": round(us / steps, 1),
                         "nodes_per_step": round(count[op] / steps, 1)} for op, us in by_op.most_common()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "ort_decode_profile.json"))
    args = ap.parse_args()
    rows = []
    for path in args.models:
        row = profile(path, args.steps)
        rows.append(row)
        top = ", ".join(f"{op} {v['share']:.0%}" for op, v in list(row["ops"].items())[:6])
        print(f"{path}: {row['kernel_us_per_step']:.0f} us of kernels per decode step ({top})", flush=True)
    Path(args.json).write_text(json.dumps({"command": "python scripts/profile_ort_decode.py " +
                                           " ".join(sys.argv[1:]), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
