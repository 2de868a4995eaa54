"""LiteRT-LM's own benchmark (`litert_lm.Benchmark`, what `litert-lm benchmark` runs) on one .litertlm in a fresh
process, so its peak memory is its own.

Usage: python -m edgedistil.bench.litertlm_worker SPEC.json  (prints one JSON line)
SPEC: {"model": path, "threads": int, "prefill_tokens": P, "decode_tokens": N, "repeats": R, "cache_dir": str}
Each repeat is a whole benchmark (engine init, one prefill of P tokens, N decode steps), as the CLI runs it.
cache_dir: a folder for its XNNPACK weight cache, or ":nocache".
"""

from __future__ import annotations

import json
import sys

from edgedistil.bench.ort_worker import status_mb
from edgedistil.runtimes.litert import quiet_stderr


def main(spec: dict) -> dict:
    import litert_lm

    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    runs = []
    for _ in range(spec["repeats"]):
        with quiet_stderr():
            info = litert_lm.Benchmark(model_path=spec["model"],
                                       backend=litert_lm.Backend.CPU(thread_count=spec["threads"]),
                                       prefill_tokens=spec["prefill_tokens"], decode_tokens=spec["decode_tokens"],
                                       cache_dir=spec["cache_dir"]).run()
        runs.append({"init_seconds": info.init_time_in_second, "ttft_ms": info.time_to_first_token_in_second * 1e3,
                     "prefill_tokens_per_s": info.last_prefill_tokens_per_second,
                     "decode_tokens_per_s": info.last_decode_tokens_per_second,
                     "prefill_tokens": info.last_prefill_token_count, "decode_tokens": info.last_decode_token_count})
    return {"runs": runs, "peak_memory_mb": status_mb("VmHWM")}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(open(sys.argv[1]).read()))))
    sys.stdout.flush()
