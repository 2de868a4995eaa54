"""The bench stage on ONNX Runtime (CPU, host): student beside teacher in one run, medians over repeats.

Each model runs in its own process (edgedistil.bench.ort_worker) so peak memory is measured per model. Speed
figures are tokens/s of the model's own decode loop through the Python binding; the cache goes in and out of
every step, as the exported graph defines.
"""

from __future__ import annotations

import os
import platform
import statistics
from importlib import metadata
from pathlib import Path

from edgedistil.bench.worker import run_worker
from edgedistil.errors import EdgeError
from edgedistil.records import sha256_file

METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms")


def medians(runs: list[dict]) -> dict:
    """Each metric's median over the timed runs, and its [min, max] as `<metric>_spread`."""
    out = {}
    for m in METRICS:
        values = [r[m] for r in runs]
        out[m] = round(statistics.median(values), 2)
        out[m + "_spread"] = [round(min(values), 2), round(max(values), 2)]
    return out


def runtime_label(threads: int) -> str:
    return (f"onnxruntime {metadata.version('onnxruntime')} CPUExecutionProvider, {threads} thread(s), "
            f"host {platform.machine()} (native, not a browser or phone)")


def bench_model(path: Path, prompt: list[int], prefill_len: int, new_tokens: int, repeats: int,
                threads: int, pp: tuple[int, ...] = (), depths: tuple[int, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"model {path} does not exist", "build the bundle first or check --model")
    spec = {"model": str(path), "threads": threads, "prompt": prompt, "prefill_len": prefill_len,
            "new_tokens": new_tokens, "repeats": repeats, "pp": list(pp), "depths": list(depths)}
    raw = run_worker("edgedistil.bench.ort_worker", spec, f"benchmarking {path} failed",
                     "run `edgedistil verify` on the bundle", env={"OMP_NUM_THREADS": str(threads)})
    out = {"file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path),
           "runtime": runtime_label(threads), "repeats": repeats, "load_seconds": round(raw["load_seconds"], 3),
           "peak_memory_mb": round(raw["peak_memory_mb"], 1), "rss_after_load_mb": round(raw["rss_after_load_mb"], 1)}
    out.update(medians(raw["runs"]))
    if "llama_bench" in raw:
        out["llama_bench"] = {k: {m: (round(x, 2) if isinstance(x, float) else x) for m, x in v.items()}
                              for k, v in raw["llama_bench"].items()}
    return out


def run_bench(models: dict[str, Path], prompt: list[int], prefill_len: int, new_tokens: int, repeats: int,
              threads: int, log=print, pp: tuple[int, ...] = (64, 256),
              depths: tuple[int, ...] = (0, 128, 512)) -> dict:
    """Benchmark each model in `models` ({"student": path, "teacher": path}) with the same prompt and settings,
    plus the llama-bench figures: prefill of `pp` tokens and decode at context `depths` (null where the cache is
    too short), each with wall tok/s and CPU-ms per token."""
    record = {"stage": "bench", "runtime": runtime_label(threads), "threads": threads,
              "prompt_tokens": len(prompt), "prefill_len": prefill_len, "new_tokens": new_tokens,
              "repeats": repeats, "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    for role, path in models.items():
        log(f"bench[{role}]: {Path(path).name} ({Path(path).stat().st_size / 1e6:.1f} MB), {repeats} repeats")
        record[role] = bench_model(path, prompt, prefill_len, new_tokens, repeats, threads, pp, depths)
        r = record[role]
        log(f"bench[{role}]: decode {r['decode_tokens_per_s']:.1f} tok/s, prefill {r['prefill_tokens_per_s']:.1f} "
            f"tok/s, TTFT {r['ttft_ms']:.0f} ms, peak {r['peak_memory_mb']:.0f} MB")
        for name, m in r.get("llama_bench", {}).items():
            figure = (f"{m['tokens_per_s']:9.1f} tok/s  {m['cpu_ms_per_token']:7.2f} CPU-ms/token"
                      if m.get("tokens_per_s") else f"n/a: {m['reason']}")
            log(f"bench[{role}]:   {name:<12} {figure}")
    if "student" in record and "teacher" in record:
        record["speedup_vs_teacher"] = round(record["student"]["decode_tokens_per_s"]
                                             / record["teacher"]["decode_tokens_per_s"], 3)
    return record
