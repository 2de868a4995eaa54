"""One benchmark run of one .tflite in a fresh process, so its peak memory is its own.

Usage: python -m edgedistil.bench.litert_worker SPEC.json  (prints one JSON line)
SPEC: {"model": path, "threads": int, "prompt": [ids], "new_tokens": N, "repeats": R, "binding": "resident" | "glue"}

- resident: the CompiledModel loop with the cache kept in LiteRT's buffers (what an app does): load time, TTFT,
  prefill and decode tokens/s, peak RSS.
- glue: decode through the Interpreter three ways, to show what the Python binding costs: the stock
  SignatureRunner (re-allocates and copies every call), tensors allocated once with the cache copied in and out
  (LiteRtLM.step), and invoke alone with the inputs left in place.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from edgedistil.bench.ort_worker import status_mb
from edgedistil.runtimes.litert import LiteRtLM, ResidentLoop


def resident(spec: dict) -> dict:
    t0 = time.perf_counter()
    loop = ResidentLoop(spec["model"], threads=spec["threads"])
    load_s = time.perf_counter() - t0
    rss_loaded = status_mb("VmRSS")
    prompt, n_new = spec["prompt"], spec["new_tokens"]
    runs = []
    for r in range(spec["repeats"] + 1):  # the first run warms up and is not counted
        loop.reset()
        t0 = time.perf_counter()
        token, read = loop.prefill(prompt)
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        loop.decode(token, len(prompt), n_new, read)
        decode_s = time.perf_counter() - t1
        if r:
            runs.append({"ttft_ms": ttft * 1e3, "prefill_tokens_per_s": len(prompt) / ttft,
                         "decode_tokens_per_s": n_new / decode_s})
    return {"load_seconds": load_s, "rss_after_load_mb": rss_loaded, "runs": runs, "peak_memory_mb": status_mb("VmHWM")}


def glue(spec: dict) -> dict:
    lm = LiteRtLM(spec["model"], threads=spec["threads"])
    n, repeats = spec["new_tokens"], spec["repeats"]
    runner = lm.interpreter.get_signature_runner("decode")

    def stock():
        cache = lm.empty_cache()
        for pos in range(n):
            out = runner(tokens=np.array([[7]], np.int32), input_pos=np.array([pos], np.int32), **cache)
            cache = {name: out[name] for name in lm.cache_names}

    def allocated_once():
        cache = lm.empty_cache()
        for pos in range(n):
            _, cache = lm.step([7], pos, cache)

    subgraph = lm.signatures["decode"][0]

    def invoke_only():
        for _ in range(n):
            lm._wrapper.Invoke(subgraph)

    out = {}
    for name, fn in (("signature_runner", stock), ("allocated_once", allocated_once), ("invoke_only", invoke_only)):
        rates = []
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            fn()
            if r:
                rates.append(n / (time.perf_counter() - t0))
        out[name + "_decode_tokens_per_s"] = sorted(rates)[len(rates) // 2]
    return out


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    print(json.dumps(resident(spec) if spec["binding"] == "resident" else glue(spec)))
    sys.stdout.flush()
