"""The android bench stage on the host: LiteRT (ai-edge-litert, XNNPACK) at 1, 2 and 4 threads, student beside
teacher, medians over repeats, and LiteRT-LM's own benchmark of each .litertlm (the same graph) in rounds that
alternate with our loop on the .tflite. Labelled "host ... (not a phone)".

The headline thread count is the profile's, capped at this machine's cores less one, which is left to the OS and the
timing process as a phone leaves 4 of its 8: on 2 cores, 4 threads ran both runtimes a third slower than 2, and 2
threads moved from round to round three times as much as 1 (docs/results/android_litertlm_vs_host.json).

Each (model, threads) runs in its own process (edgedistil.bench.litert_worker) twice: once with the cache resident
in LiteRT's buffers (the headline figures and peak memory), once through the Python Interpreter binding to show
what the glue costs (stock SignatureRunner, tensors allocated once, invoke alone).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
from importlib import metadata
from pathlib import Path

from edgedistil.convert.android import RUNTIME_LABEL
from edgedistil.convert.litertlm import LITERTLM_FILE
from edgedistil.bench.worker import run_worker
from edgedistil.errors import EdgeError
from edgedistil.records import sha256_file

METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms")
THREADS = (1, 2, 4)
METHOD = "paired-litertlm-rounds/2"  # part of the stage key: a record measured another way is not reused
LITERTLM_DECODE_TOKENS = 128  # 32-step windows moved LiteRT-LM's decode figure by +-15% from run to run


def headline_threads(profile_threads: int) -> int:
    return max(1, min(profile_threads, (os.cpu_count() or 1) - 1))


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


LITERTLM_METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "init_seconds")


def litertlm_runs(path: Path, prefill_tokens: int, decode_tokens: int, repeats: int, threads: int,
                  cache_dir: str | None = None) -> dict:
    """`repeats` runs of LiteRT-LM's own benchmark on a .litertlm in one fresh process (each a whole benchmark:
    engine init, one prefill, `decode_tokens` steps); `cache_dir` is its XNNPACK weight cache (None: none)."""
    from edgedistil.runtimes.litertlm import NO_CACHE

    spec = {"model": str(path), "threads": threads, "prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens,
            "repeats": repeats, "cache_dir": cache_dir or NO_CACHE}
    return run_worker("edgedistil.bench.litertlm_worker", spec, f"LiteRT-LM's benchmark of {path} failed",
                      "run `litert-lm run` on the file to see the runtime's own message")


def litertlm_label(threads: int) -> str:
    return (f"LiteRT-LM {metadata.version('litert-lm-api')} benchmark (litert_lm.Benchmark), CPU, {threads} "
            f"thread(s), XNNPACK weight cache on, host {platform.machine()} (not a phone)")


def bench_litertlm(path: Path, prefill_tokens: int, decode_tokens: int, repeats: int, threads: int) -> dict:
    """LiteRT-LM's own benchmark on a .litertlm: init time, TTFT, prefill and decode tokens/s (medians over repeats
    after one warm-up run that also writes the weight cache), peak RSS of its process."""
    with tempfile.TemporaryDirectory(prefix="edgedistil-litertlm-cache-") as cache:
        raw = litertlm_runs(path, prefill_tokens, decode_tokens, repeats + 1, threads, cache)
    out = {"file": str(path), "bytes": Path(path).stat().st_size, "sha256": sha256_file(path),
           "runtime": litertlm_label(threads), "threads": threads, "repeats": repeats,
           "peak_memory_mb": round(raw["peak_memory_mb"], 1)}
    return {**out, **_medians(raw["runs"][1:], LITERTLM_METRICS)}  # the first warms up


def _medians(runs: list[dict], metrics) -> dict:
    out = {}
    for m in metrics:
        values = [r[m] for r in runs]
        out[m] = round(statistics.median(values), 3 if m == "init_seconds" else 2)
        out[m + "_spread"] = [round(min(values), 3), round(max(values), 3)]
    return out


def run_bench_android(models: dict[str, Path], prompt: list[int], new_tokens: int, repeats: int, threads: int,
                      max_len: int, thread_counts: tuple[int, ...] = THREADS, log=print) -> dict:
    """Benchmark each of `models` ({"student": .tflite, "teacher": .tflite}) at each thread count; the manifest's
    headline figures and `speedup_vs_teacher` use the profile's `threads`, capped at this machine's cores less one.
    `max_len` is the graphs' cache length, which LiteRT-LM's prompt and decode steps must fit."""
    profile_threads, threads = threads, headline_threads(threads)
    counts = tuple(sorted({*thread_counts, threads}))
    record = {"stage": "bench[android]", "runtime": RUNTIME_LABEL, "threads": threads,
              "profile_threads": profile_threads, "thread_counts": list(counts),
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
    decode_tokens = max(new_tokens, min(LITERTLM_DECODE_TOKENS, max_len - len(prompt) - 1))
    record["litertlm"] = litertlm_record(models, prompt, decode_tokens, repeats, threads, log)
    return record


def litertlm_record(models: dict[str, Path], prompt: list[int], decode_tokens: int, rounds: int, threads: int,
                    log) -> dict:
    """LiteRT-LM's benchmark of the .litertlm beside each .tflite against our host loop on that .tflite: the same
    graph, threads, prompt and decode length, in alternating rounds (each run a fresh process), so a slow spell of
    the machine falls on both. LiteRT-LM runs with its XNNPACK weight cache on, as an app has it (its default is a
    file beside the model; here a temporary folder): without it the same file decoded 0.90x as fast, at 1 thread."""
    files = {role: Path(path).with_name(LITERTLM_FILE) for role, path in models.items()}
    files = {role: f for role, f in files.items() if f.is_file()}
    if not files:
        return {}
    lm_runs = {role: [] for role in files}
    host_runs = {role: [] for role in files}
    peaks = {role: [] for role in files}
    spec = {"threads": threads, "prompt": prompt, "new_tokens": decode_tokens, "repeats": 1, "binding": "resident"}
    with tempfile.TemporaryDirectory(prefix="edgedistil-litertlm-cache-") as cache:
        for role, f in files.items():  # writes each weight cache; not counted
            litertlm_runs(f, len(prompt), decode_tokens, 1, threads, cache)
        for _ in range(rounds):
            for role, f in files.items():
                host_runs[role] += _worker({**spec, "model": str(models[role])})["runs"]
                raw = litertlm_runs(f, len(prompt), decode_tokens, 1, threads, cache)
                lm_runs[role] += raw["runs"]
                peaks[role].append(raw["peak_memory_mb"])
    out = {}
    for role, f in files.items():
        r = out[role] = {"file": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f),
                         "runtime": litertlm_label(threads), "threads": threads, "repeats": rounds,
                         "prefill_tokens": len(prompt), "decode_tokens": decode_tokens,
                         "peak_memory_mb": round(statistics.median(peaks[role]), 1),
                         **_medians(lm_runs[role], LITERTLM_METRICS)}
        host = [x["decode_tokens_per_s"] for x in host_runs[role]]
        r["host_loop_decode_tokens_per_s"] = round(statistics.median(host), 2)
        r["host_loop_decode_tokens_per_s_spread"] = [round(min(host), 2), round(max(host), 2)]
        # per round, LiteRT-LM's decode over our loop's in the same round; the median of those
        r["decode_vs_host_loop"] = round(statistics.median(
            a["decode_tokens_per_s"] / b for a, b in zip(lm_runs[role], host)), 3)
        log(f"bench[android-{role}]: LiteRT-LM {threads} thread(s): decode {r['decode_tokens_per_s']:.1f} tok/s "
            f"({r['decode_vs_host_loop']:.2f}x our loop's {r['host_loop_decode_tokens_per_s']:.1f} on the same graph, "
            f"alternating rounds), prefill {r['prefill_tokens_per_s']:.0f} tok/s, TTFT {r['ttft_ms']:.0f} ms, init "
            f"{r['init_seconds']:.2f} s, peak {r['peak_memory_mb']:.0f} MB")
    if "student" in out and "teacher" in out:
        out["speedup_vs_teacher"] = round(out["student"]["decode_tokens_per_s"]
                                          / out["teacher"]["decode_tokens_per_s"], 3)
    return out
