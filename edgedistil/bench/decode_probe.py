"""Decode speed and peak memory of one model file, for the scheme searches in scripts/ (run in a fresh process).

    python -m edgedistil.bench.decode_probe ort|litert PATH   # prints: decode tok/s, peak RSS MB

A 64-token prefill, then 40 decode steps through the step function the fidelity checks use, 1 thread; the median
of the last 32 steps (the first 8 are warm-up). Not the bench stage: no repeats, no spread, no CompiledModel.
"""

import sys
import time

import numpy as np

from edgedistil.bench.ort_worker import status_mb


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "ort":
        from edgedistil.runtimes.ort import OrtLM as LM
    else:
        from edgedistil.runtimes.litert import LiteRtLM as LM
    lm = LM(path, threads=1)
    _, cache = lm.step(list(range(1, 65)), 0, lm.empty_cache())
    times = []
    for i in range(40):
        t = time.perf_counter()
        _, cache = lm.step([5], 64 + i, cache)
        times.append(time.perf_counter() - t)
    print(1 / np.median(times[8:]), status_mb("VmHWM"))


if __name__ == "__main__":
    main()
