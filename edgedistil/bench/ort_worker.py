"""One benchmark run of one ONNX model in a fresh process, so its peak memory is its own.

Usage: python -m edgedistil.bench.ort_worker SPEC.json  (prints one JSON line)
SPEC: {"model": path, "threads": int, "prompt": [ids], "prefill_len": P, "new_tokens": N, "repeats": R,
       "pp": [prompt lengths], "depths": [context depths]}  (pp/depths optional: the llama-bench style figures)
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
    out = {"load_seconds": load_s, "rss_after_load_mb": rss_loaded, "runs": runs}
    if spec.get("pp") or spec.get("depths"):
        out["llama_bench"] = llama_bench(lm, spec)
    out["peak_memory_mb"] = status_mb("VmHWM")
    return out


def timed(fn):
    """(wall seconds, CPU seconds of this process) of fn(): CPU time is the steadier figure on a shared machine."""
    w, c = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - w, time.process_time() - c, result


def llama_bench(lm, spec: dict) -> dict:
    """pp<L>: prefill of L tokens from an empty cache, in chunks of P; tg<N>@d<D>: N greedy decode steps after a
    context of D tokens. Medians over `repeats` after one warm-up; a length the cache cannot hold is null."""
    chunk, n_new, repeats = spec["prefill_len"], spec["new_tokens"], spec["repeats"]
    filler = [(7 * i + 3) % 97 for i in range(lm.max_len)]  # token ids do not change speed
    out = {}
    for length in spec.get("pp", []):
        key = f"pp{length}"
        if -(-length // chunk) * chunk > lm.max_len:
            out[key] = {"value": None,
                        "reason": f"a {length}-token prompt does not fit the {lm.max_len}-position cache"}
            continue
        rows = [timed(lambda: prefill(lm.step, lm.empty_cache(), filler[:length], chunk, lm.max_len))
                for _ in range(repeats + 1)][1:]
        out[key] = {"tokens_per_s": length / median([r[0] for r in rows]),
                    "cpu_ms_per_token": 1e3 * median([r[1] for r in rows]) / length}
    for depth in spec.get("depths", []):
        key = f"tg{n_new}@d{depth}"
        if depth + n_new + 1 > lm.max_len:
            out[key] = {"value": None,
                        "reason": f"depth {depth} + {n_new} tokens exceed the {lm.max_len}-position cache"}
            continue
        rows = []
        for _ in range(repeats + 1):
            cache, tok = lm.empty_cache(), 1
            if depth:
                logits, cache = prefill(lm.step, cache, filler[:depth], chunk, lm.max_len)
                tok = int(logits[-1].argmax())

            def loop(cache=cache, tok=tok):
                for pos in range(depth, depth + n_new):
                    logits, cache = lm.step([tok], pos, cache)
                    tok = int(logits[-1].argmax())
            rows.append(timed(loop))
        rows = rows[1:]
        out[key] = {"tokens_per_s": n_new / median([r[0] for r in rows]),
                    "cpu_ms_per_token": 1e3 * median([r[1] for r in rows]) / n_new}
    return out


def median(values):
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    print(json.dumps(run(spec)))
    sys.stdout.flush()
