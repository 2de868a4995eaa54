"""The android bench stage on the host: LiteRT (ai-edge-litert, XNNPACK) at 1, 2 and 4 threads, student beside
teacher, medians over repeats, and LiteRT-LM's own benchmark of each .litertlm (the same graph) at the profile's
threads. Labelled "host ... (not a phone)".

Each (model, threads) runs in its own process (edgedistil.bench.litert_worker) twice: once with the cache resident
in LiteRT's buffers (the headline figures and peak memory), once through the Python Interpreter binding to show
what the glue costs (stock SignatureRunner, tensors allocated once, invoke alone).
"""

from __future__ import annotations

import os
import platform
import statistics
from importlib import metadata
from pathlib import Path

from edgedistil.convert.android import RUNTIME_LABEL
from edgedistil.convert.litertlm import LITERTLM_FILE
from edgedistil.bench.worker import run_worker
from edgedistil.errors import EdgeError
from edgedistil.records import sha256_file

METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms")
THREADS = (1, 2, 4)


def runtime_label(threads: int) -> str:
    return (f"{RUNTIME_LABEL}: ai-edge-litert {metadata.version('ai-edge-litert')} CompiledModel, {threads} "
            f"thread(s), host {platform.machine()}, {os.cpu_count()} CPUs (not a phone)")


def _worker(spec: dict) -> dict:
    return run_worker("edgedistil.bench.litert_worker", spec, f"benchmarking {spec['model']} on LiteRT failed",
                      "run `edgedistil verify` on the bundle")


def bench_model(path: Path, prompt: list[int], new_tokens: int, repeats: int, threads: int) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"model {path} does not exist", "build the bundle first or check --model")
    spec = {"model": str(path), "threads": threads, "prompt": prompt, "new_tokens": new_tokens, "repeats": repeats}
    raw = _worker({**spec, "binding": "resident"})
    out = {"file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path),
           "runtime": runtime_label(threads), "threads": threads, "repeats": repeats,
           "binding": "CompiledModel, cache resident in two swapped TensorBuffer pairs",
           "load_seconds": round(raw["load_seconds"], 3), "peak_memory_mb": round(raw["peak_memory_mb"], 1),
           "rss_after_load_mb": round(raw["rss_after_load_mb"], 1)}
    for m in METRICS:
        values = [r[m] for r in raw["runs"]]
        out[m] = round(statistics.median(values), 2)
        out[m + "_spread"] = [round(min(values), 2), round(max(values), 2)]
    g = _worker({**spec, "binding": "glue"})
    out["python_glue"] = {k: round(v, 1) for k, v in g.items()}
    # the share of a stock SignatureRunner step that is Python-side copying and re-allocation, not invoke
    out["python_glue"]["signature_runner_overhead"] = round(
        1 - g["signature_runner_decode_tokens_per_s"] / g["invoke_only_decode_tokens_per_s"], 3)
    return out


def bench_litertlm(path: Path, prefill_tokens: int, decode_tokens: int, repeats: int, threads: int) -> dict:
    """LiteRT-LM's own benchmark on a .litertlm: init time, TTFT, prefill and decode tokens/s (medians over repeats
    after one warm-up run), peak RSS of its process."""
    spec = {"model": str(path), "threads": threads, "prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens,
            "repeats": repeats + 1}
    raw = run_worker("edgedistil.bench.litertlm_worker", spec, f"LiteRT-LM's benchmark of {path} failed",
                     "run `litert-lm run` on the file to see the runtime's own message")
    runs = raw["runs"][1:]  # the first warms up
    out = {"file": str(path), "bytes": Path(path).stat().st_size, "sha256": sha256_file(path),
           "runtime": f"LiteRT-LM {metadata.version('litert-lm-api')} benchmark (litert_lm.Benchmark), CPU, "
                      f"{threads} thread(s), host {platform.machine()} (not a phone)",
           "threads": threads, "repeats": repeats, "peak_memory_mb": round(raw["peak_memory_mb"], 1)}
    for m in ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "init_seconds"):
        values = [r[m] for r in runs]
        out[m] = round(statistics.median(values), 3 if m == "init_seconds" else 2)
        out[m + "_spread"] = [round(min(values), 3), round(max(values), 3)]
    return out


def run_bench_android(models: dict[str, Path], prompt: list[int], new_tokens: int, repeats: int, threads: int,
                      thread_counts: tuple[int, ...] = THREADS, log=print) -> dict:
    """Benchmark each of `models` ({"student": .tflite, "teacher": .tflite}) at each thread count; `threads` is the
    profile's, which the manifest's headline figures and `speedup_vs_teacher` use."""
    counts = tuple(sorted({*thread_counts, threads}))
    record = {"stage": "bench[android]", "runtime": RUNTIME_LABEL, "threads": threads, "thread_counts": list(counts),
              "prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": repeats,
              "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    for role, path in models.items():
        record[role] = {}
        for t in counts:
            r = record[role][str(t)] = bench_model(path, prompt, new_tokens, repeats, t)
            log(f"bench[android-{role}]: {t} thread(s): decode {r['decode_tokens_per_s']:.1f} tok/s, prefill "
                f"{r['prefill_tokens_per_s']:.0f} tok/s, TTFT {r['ttft_ms']:.0f} ms, peak {r['peak_memory_mb']:.0f} MB"
                f" (stock SignatureRunner {r['python_glue']['signature_runner_decode_tokens_per_s']:.1f} tok/s)")
    if "student" in record and "teacher" in record:
        record["speedup_vs_teacher"] = round(record["student"][str(threads)]["decode_tokens_per_s"]
                                             / record["teacher"][str(threads)]["decode_tokens_per_s"], 3)
    record["litertlm"] = litertlm_record(models, record, len(prompt), new_tokens, repeats, threads, log)
    return record


def litertlm_record(models: dict[str, Path], record: dict, prompt_tokens: int, new_tokens: int, repeats: int,
                    threads: int, log) -> dict:
    """LiteRT-LM's benchmark of the .litertlm beside each .tflite, at the profile's threads, beside our host loop
    on the same graph."""
    out = {}
    for role, path in models.items():
        lm = Path(path).with_name(LITERTLM_FILE)
        if not lm.is_file():
            continue
        r = out[role] = bench_litertlm(lm, prompt_tokens, new_tokens, repeats, threads)
        host = record[role][str(threads)]["decode_tokens_per_s"]
        r["decode_vs_host_loop"] = round(r["decode_tokens_per_s"] / host, 3)
        log(f"bench[android-{role}]: LiteRT-LM {threads} thread(s): decode {r['decode_tokens_per_s']:.1f} tok/s "
            f"({r['decode_vs_host_loop']:.2f}x our loop on the same graph), prefill {r['prefill_tokens_per_s']:.0f} "
            f"tok/s, TTFT {r['ttft_ms']:.0f} ms, init {r['init_seconds']:.2f} s, peak {r['peak_memory_mb']:.0f} MB")
    if "student" in out and "teacher" in out:
        out["speedup_vs_teacher"] = round(out["student"]["decode_tokens_per_s"]
                                          / out["teacher"]["decode_tokens_per_s"], 3)
    return out
