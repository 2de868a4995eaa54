"""onnxruntime-genai on the Hugging Face ONNX folder we ship, beside genai on its own model builder's export of the
same student (issue 20: our folder in genai at least as fast as genai's own export, at each precision).

Each model runs in its own process through bench/peers.py (one thread, greedy, the same prompt), one model after
the other for `rounds` rounds, and each model's median round is kept: a slow stretch of the machine hits every
model. The builder's exports are made once into <cache>/bench-genai/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).with_name("peers.py")
# the folder's dtype -> the builder's precision for the same weights
BUILDER_PRECISION = {"fp32": "fp32", "q4": "int4"}


def run_peer(python: str, mode: str, source: Path, work: Path, prompt: int, new: int, repeats: int,
             *extra: str) -> dict:
    """One peers.py measurement in a fresh process (`python`: a venv's interpreter); a failure is recorded as such."""
    if not Path(python).is_file():
        return {"value": None, "reason": f"no venv for {mode} at {python}"}
    proc = subprocess.run([python, str(PEERS), mode, str(source), str(work), str(prompt), str(new), str(repeats),
                           *extra], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        return {"value": None, "reason": f"{mode} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_round(results: list[dict]) -> dict:
    """The round with the median decode speed, as it was measured, with every round's decode speed beside it."""
    measured = sorted((r for r in results if r.get("decode_tokens_per_s")), key=lambda r: r["decode_tokens_per_s"])
    if not measured:
        return results[-1]
    return {**measured[(len(measured) - 1) // 2],
            "rounds_decode_tokens_per_s": [r.get("decode_tokens_per_s") for r in results]}


def genai_beside_builder(folder: Path, student: Path, dtypes: list[str], work: Path, prompt_tokens: int,
                         new_tokens: int, repeats: int, rounds: int = 2, log=print) -> dict:
    """For each of `dtypes` (the folder's onnx/ files the builder has a precision for): genai on `folder` with
    genai_config.json naming that file, and genai on its builder's export of `student`; their decode ratio and
    whether their first 16 greedy ids agree."""
    from edgedistil.convert.hf_onnx import DTYPE_FILES

    work.mkdir(parents=True, exist_ok=True)
    models = {}
    for dtype in dtypes:
        models[(dtype, "ours")] = ("genai-ours", folder, f"onnx/{DTYPE_FILES[dtype]}")
        models[(dtype, "builder")] = (f"genai-{BUILDER_PRECISION[dtype]}", student)
    runs: dict[tuple, list[dict]] = {name: [] for name in models}
    for r in range(rounds):
        for name, (mode, source, *extra) in models.items():
            runs[name].append(run_peer(sys.executable, mode, source, work, prompt_tokens, new_tokens, repeats, *extra))
    out = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats, "rounds": rounds,
           "threads": 1, "precisions": {}}
    for dtype in dtypes:
        ours, builder = (median_round(runs[(dtype, who)]) for who in ("ours", "builder"))
        a, b = ours.get("decode_tokens_per_s"), builder.get("decode_tokens_per_s")
        entry = {"ours": ours, "builder": builder, "file": f"onnx/{DTYPE_FILES[dtype]}",
                 "builder_precision": BUILDER_PRECISION[dtype],
                 "decode_ours_over_builder": round(a / b, 3) if a and b else None,
                 "same_first_16_ids": ours.get("tokens") == builder.get("tokens") if a and b else None}
        out["precisions"][dtype] = entry
        if a and b:
            log(f"bench-genai[{dtype}]: genai decodes our folder at {a:.1f} tok/s, its own export at {b:.1f} "
                f"({entry['decode_ours_over_builder']:.2f}x)")
        else:
            log(f"bench-genai[{dtype}]: not measured: {ours.get('reason') or builder.get('reason')}")
    return out
