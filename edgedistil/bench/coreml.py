"""The bench for `ios`: Core ML on a Mac (macOS 15+), per compute-unit setting, medians over repeats.

Each compute-unit setting (CPU_ONLY, CPU_AND_GPU, CPU_AND_NE, ALL) runs in its own process, so its peak memory is
its own (`ru_maxrss` of that process). A run is: a fresh `make_state()`, chunked prefill of the prompt (TTFT and
prefill tok/s), then `new_tokens` greedy decode steps (decode tok/s); the first run warms up and is not counted.
The step function is edgedistil.runtimes.coreml.CoreMLLM, the loop edgedistil.decoding's, as for every runtime.

On Linux there is no Core ML: `run_bench_coreml` raises EdgeError before starting anything.

Usage of the worker: python -m edgedistil.bench.coreml SPEC.json  (prints one JSON line)
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from edgedistil.bench.worker import run_worker
from edgedistil.errors import EdgeError
from edgedistil.runtimes.coreml import COMPUTE_UNITS, require_macos

METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms")


def run_metrics(prompt_tokens: int, new_tokens: int, ttft_s: float, decode_s: float) -> dict[str, float]:
    """One run's figures from its two timings."""
    return {"ttft_ms": ttft_s * 1e3, "prefill_tokens_per_s": prompt_tokens / ttft_s,
            "decode_tokens_per_s": new_tokens / decode_s}


def summarize(runs: list[dict[str, float]]) -> dict:
    """Median of each metric over the counted runs, with [min, max] as its spread."""
    if not runs:
        raise EdgeError("no timed runs to summarize", "bench with repeats >= 1")
    out = {}
    for m in METRICS:
        values = [r[m] for r in runs]
        out[m] = round(statistics.median(values), 2)
        out[m + "_spread"] = [round(min(values), 2), round(max(values), 2)]
    return out


def peak_memory_mb(maxrss: int, system: str | None = None) -> float:
    """ru_maxrss is in bytes on macOS and in KiB on Linux."""
    return maxrss / 2**20 if (system or platform.system()) == "Darwin" else maxrss / 1024


def time_runs(lm, prompt: list[int], prefill_len: int, new_tokens: int, repeats: int, clock=time.perf_counter):
    """`repeats` timed generations (after one warm-up) on any step-function runtime `lm`."""
    from edgedistil.decoding import prefill

    runs = []
    for r in range(repeats + 1):
        cache = lm.empty_cache()
        t0 = clock()
        logits, cache = prefill(lm.step, cache, prompt, prefill_len, lm.max_len)
        tok = int(logits[-1].argmax())
        ttft = clock() - t0
        pos = len(prompt)
        t1 = clock()
        for _ in range(new_tokens):
            logits, cache = lm.step([tok], pos, cache)
            tok = int(logits[-1].argmax())
            pos += 1
        if r:  # the first run warms up Core ML's compiled model and allocations
            runs.append(run_metrics(len(prompt), new_tokens, ttft, clock() - t1))
    return runs


def worker(spec: dict) -> dict:
    """One compute-unit setting in this process (macOS only)."""
    import resource

    from edgedistil.runtimes.coreml import CoreMLLM

    t0 = time.perf_counter()
    lm = CoreMLLM(spec["package"], spec["compute_units"])
    load_s = time.perf_counter() - t0
    runs = time_runs(lm, spec["prompt"], spec["prefill_len"], spec["new_tokens"], spec["repeats"])
    return {"load_seconds": load_s, "runs": runs,
            "peak_memory_mb": peak_memory_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}


def bench_compute_units(package: Path, units: str, prompt: list[int], prefill_len: int, new_tokens: int,
                        repeats: int) -> dict:
    spec = {"package": str(package), "compute_units": units, "prompt": prompt, "prefill_len": prefill_len,
            "new_tokens": new_tokens, "repeats": repeats}
    raw = run_worker("edgedistil.bench.coreml", spec, f"Core ML bench of {package} with {units} failed",
                     "run `edgedistil verify` on the bundle, and check macOS is 15 or later")
    return {"compute_units": units, "repeats": repeats, "load_seconds": round(raw["load_seconds"], 3),
            "peak_memory_mb": round(raw["peak_memory_mb"], 1), **summarize(raw["runs"])}


def run_bench_coreml(package: Path, prompt: list[int], prefill_len: int, new_tokens: int, repeats: int,
                     compute_units: tuple[str, ...] = COMPUTE_UNITS, log=print) -> dict:
    """Core ML figures for each compute-unit setting; `student` is the ALL setting (what an app gets by default)."""
    require_macos()
    package = Path(package)
    if not package.is_dir():
        raise EdgeError(f"Core ML package {package} does not exist", "build it with `edgedistil build --target ios`")
    record = {"stage": "bench", "runtime": f"Core ML, macOS {platform.mac_ver()[0]} {platform.machine()}",
              "package": str(package), "prompt_tokens": len(prompt), "prefill_len": prefill_len,
              "new_tokens": new_tokens, "repeats": repeats, "loadavg_1m": round(os.getloadavg()[0], 2),
              "compute_units": {}}
    for units in compute_units:
        log(f"bench[ios]: {units}, {repeats} repeats")
        r = bench_compute_units(package, units, prompt, prefill_len, new_tokens, repeats)
        record["compute_units"][units] = r
        log(f"bench[ios]: {units}: decode {r['decode_tokens_per_s']:.1f} tok/s, prefill "
            f"{r['prefill_tokens_per_s']:.1f} tok/s, TTFT {r['ttft_ms']:.0f} ms, peak {r['peak_memory_mb']:.0f} MB")
    if "ALL" in record["compute_units"]:
        record["student"] = {**record["compute_units"]["ALL"], "runtime": record["runtime"] + ", compute units ALL"}
    return record


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(Path(sys.argv[1]).read_text()))))
    sys.stdout.flush()
