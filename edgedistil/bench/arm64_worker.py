"""One .tflite (and its .litertlm) on whatever CPU runs this process: the emulated ARM64 bench runs it under QEMU
in the arm64 Debian root and natively on the host, the same code on both, so the two differ only in the kernels.

It imports only numpy, ai-edge-litert, litert-lm-api and edgedistil's pure-Python parts (no torch): those are what
the arm64 root has.

Usage: python -m edgedistil.bench.arm64_worker SPEC.json  (prints one JSON line; writes the logits as .npy)
SPEC: {"model": .tflite, "heldout_ids": [...], "chunk": P, "max_len": C, "segments": S, "greedy_tokens": N,
       "logits_out": path.npy, "speed": {"models": {role: .tflite}, "prompt": [...], "new_tokens": N},
       "litertlm": {"model": .litertlm, "prompt": text, "new_tokens": N} (optional)}
"""

from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np

from edgedistil.decoding import decode, greedy, prefill
from edgedistil.fidelity import greedy_prompt, teacher_forced
from edgedistil.runtimes.litert import LiteRtLM


def decode_speed(path: str, prompt: list[int], new_tokens: int, chunk: int, max_len: int) -> float:
    """Decode tokens/s through the interpreter (1 thread), after a chunked prefill of `prompt`; the ids are fixed,
    since they do not change the work."""
    lm = LiteRtLM(path, threads=1)
    _, cache = prefill(lm.step, lm.empty_cache(), prompt, chunk, max_len)
    decode(lm.step, cache, [1], len(prompt))  # warm-up: the first invoke sets up XNNPACK's packed weights
    t0 = time.perf_counter()
    decode(lm.step, cache, [(7 * i + 3) % 97 for i in range(new_tokens)], len(prompt))
    return new_tokens / (time.perf_counter() - t0)


def litertlm_generation(spec: dict) -> dict:
    """LiteRT-LM's greedy continuation, or why the runtime could not run here (one line)."""
    try:
        from edgedistil.runtimes.litertlm import LiteRtLmRuntime

        runtime = LiteRtLmRuntime(spec["model"])
        try:
            got = runtime.generate(spec["prompt"], spec["new_tokens"])
        finally:
            runtime.close()
        return {"ran": True, "text": got.text, "prompt_tokens": got.prompt_tokens, "new_tokens": got.new_tokens}
    except Exception as e:  # any failure of the runtime on this CPU is the finding, reported in one line
        return {"ran": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}


def main(spec: dict) -> dict:
    lm = LiteRtLM(spec["model"], threads=1)
    ids = np.asarray(spec["heldout_ids"])
    chunk, max_len = spec["chunk"], spec["max_len"]
    logits, _ = teacher_forced(lm, ids, chunk, max_len, spec["segments"])
    np.save(spec["logits_out"], logits.astype(np.float32), allow_pickle=False)
    prompt = greedy_prompt(ids, chunk)
    tokens = greedy(lm.step, lm.empty_cache(), prompt, spec["greedy_tokens"], chunk, max_len)
    s = spec["speed"]
    speed = {role: round(decode_speed(path, s["prompt"], s["new_tokens"], chunk, max_len), 2)
             for role, path in s["models"].items()}
    out = {"machine": platform.machine(), "greedy": tokens, "decode_tokens_per_s": speed}
    if spec.get("litertlm"):
        out["litertlm"] = litertlm_generation(spec["litertlm"])
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(open(sys.argv[1]).read()))))
    sys.stdout.flush()
