"""One benchmark run of one ONNX model in a fresh process, so its peak memory is its own.

Usage: python -m edgedistil.bench.ort_worker SPEC.json  (prints one JSON line)
SPEC: {"model": path, "threads": int, "prompt": [ids], "prefill_len": P, "new_tokens": N, "repeats": R}
"""

from __future__ import annotations

import json
import sys
import time


from edgedistil.decoding import prefill
from edgedistil.runtimes.ort import OrtLM


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc (Linux). VmHWM is the peak resident set of this program alone:
    getrusage's ru_maxrss would carry over the parent's peak through fork and exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run(spec: dict) -> dict:
    t0 = time.perf_counter()
    lm = OrtLM(spec["model"], threads=spec["threads"])
    load_s = time.perf_counter() - t0
    rss_loaded = status_mb("VmRSS")
    prompt, chunk, n_new = spec["prompt"], spec["prefill_len"], spec["new_tokens"]
    runs = []
    for r in range(spec["repeats"] + 1):  # the first run warms up allocations and is not counted
        cache = lm.empty_cache()
        t0 = time.perf_counter()
        logits, cache = prefill(lm.step, cache, prompt, chunk, lm.max_len)
        tok = int(logits[-1].argmax())
        ttft = time.perf_counter() - t0
        pos = len(prompt)
        t1 = time.perf_counter()
        for _ in range(n_new):
            logits, cache = lm.step([tok], pos, cache)
            tok = int(logits[-1].argmax())
            pos += 1
        decode_s = time.perf_counter() - t1
        if r:
            runs.append({"ttft_ms": ttft * 1e3, "prefill_tokens_per_s": len(prompt) / ttft,
                         "decode_tokens_per_s": n_new / decode_s})
    return {"load_seconds": load_s, "rss_after_load_mb": rss_loaded,
            "peak_memory_mb": status_mb("VmHWM"), "runs": runs}


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    print(json.dumps(run(spec)))
    sys.stdout.flush()
