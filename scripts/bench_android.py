"""Measure litert-torch's peak memory while converting, the figure behind the android pre-flight's estimate.

    python scripts/bench_android.py --run RUN          # the student of RUN (a build's --out) and the embedded teacher

Each conversion (fp32 and dynamic int8, prefill + decode signatures) runs in a fresh process; its peak resident set
(VmHWM) and wall time are written to docs/results/android_converter_memory.json (or --json PATH), beside the
estimate edgedistil.convert.android.converter_peak_bytes gives for the same parameter count.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CONVERT = """
import sys, torch
from edgedistil.convert.android import convert_tflite
from edgedistil.bench.ort_worker import status_mb
from edgedistil.model import load_hf_folder
model = load_hf_folder(sys.argv[1], max_len=256).eval()
convert_tflite(model, sys.argv[2], sys.argv[3], prefill_len=64, max_len=256)
print(sum(p.numel() for p in model.parameters()), status_mb("VmHWM"))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a build's run folder (its distill/student is converted)")
    ap.add_argument("--variants", default="fp32,dynamic_int8")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "android_converter_memory.json"))
    args = ap.parse_args()

    from edgedistil.convert.android import converter_peak_bytes
    from edgedistil.sources import embedded_teacher

    models = {"student": Path(args.run) / "distill" / "student", "teacher": embedded_teacher(log=lambda m: None)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for role, folder in models.items():
            for variant in args.variants.split(","):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", CONVERT, str(folder), variant,
                                       str(Path(tmp) / f"{role}-{variant}.tflite")], capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{role} {variant}: {proc.stderr[-2000:]}")
                params, peak_mb = proc.stdout.split()[-2:]
                row = {"model": role, "variant": variant, "parameters": int(params), "peak_rss_mb": round(float(peak_mb)),
                       "estimate_mb": round(converter_peak_bytes(int(params)) / 1e6),
                       "seconds": round(time.perf_counter() - t0, 1),
                       "tflite_mb": round((Path(tmp) / f"{role}-{variant}.tflite").stat().st_size / 1e6, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"command": "python scripts/bench_android.py " + " ".join(sys.argv[1:]), "machine": platform.machine(),
           "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
