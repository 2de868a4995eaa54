"""onnxruntime-genai on the folder we ship, against genai on its own model builder's export of the same student, and
against our own ONNX Runtime loop on our files: fp32 and int4, side by side in one run (issue 20).

    python scripts/bench_genai.py --run RUN        # after `edgedistil build --target onnx --out RUN`

- genai on our folder: RUN/dist/onnx as shipped (genai_config.json names onnx/model.onnx), and with
  `model.decoder.filename` set to onnx/model_q4.onnx, as the README tells a developer to;
- genai on its own export: `python -m onnxruntime_genai.models.builder -i RUN/distill/student -p fp32|int4 -e cpu`
  (built once into <cache>/bench-genai/);
- our loop: edgedistil's ONNX Runtime decode loop (bench/ort.py) on the same two files of ours.
Every model runs in its own process, one thread, greedy, after the same 64-token prompt, once per round in turn
(round-robin, so a slow stretch of the machine hits them all); each model's median round is kept. genai's decode
tok/s is (N2 - N1) new tokens over the time difference of two generate calls (edgedistil/bench/peers.py), so the
prompt and setup cancel. Also records whether genai gives the same first 16 ids on our folder as on its export.
Goal: our folder in genai at least as fast (1.0x) as genai's own export, at each precision.
Writes docs/results/genai_folder.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from edgedistil.records import machine

REPO = Path(__file__).resolve().parent.parent
PROMPT = [(7 * i + 3) % 97 + 100 for i in range(64)]  # the prompt peers.py builds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder of `edgedistil build --target onnx`")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--q4", action="append", default=[], metavar="NAME=FILE",
                    help="another int4 file to run through genai in our folder beside model_q4.onnx (repeatable): "
                         "the quantize stage's other settings, timed in the same rounds")
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "genai_folder.json")
    args = ap.parse_args()

    from edgedistil.bench.genai import median_round, run_peer

    from edgedistil.bench.ort import bench_model
    from edgedistil.errors import EdgeError, write_json
    from edgedistil.sources.cache import cache_dir

    folder, student = args.run / "dist" / "onnx", args.run / "distill" / "student"
    for need, fix in ((folder / "genai_config.json", "run `edgedistil build --target onnx --out RUN` first"),
                      (folder / "onnx" / "model_q4.onnx", "the onnx profile's hf_onnx must ship q4"),
                      (student / "config.json", "RUN must be the run folder the bundle was built in")):
        if not need.is_file():
            raise SystemExit(str(EdgeError(f"{need} does not exist", fix)))
    candidates = dict(q.split("=", 1) for q in args.q4 if "=" in q)
    if len(candidates) != len(args.q4) or not all(Path(f).is_file() for f in candidates.values()):
        raise SystemExit(str(EdgeError(f"--q4 takes NAME=FILE with an existing ONNX file, got {args.q4}",
                                       "name each file, e.g. --q4 eight_bit_head=/tmp/q/model.onnx")))
    work = cache_dir() / "bench-genai"
    work.mkdir(parents=True, exist_ok=True)
    if candidates:  # our folder again, its onnx/ holding the candidates beside the shipped files
        shipped, folder = folder, work / "ours-with-candidates"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "onnx").mkdir(parents=True)
        for entry in shipped.iterdir():
            if entry.name != "onnx":
                (folder / entry.name).symlink_to(entry.resolve())
        for entry in (shipped / "onnx").iterdir():
            (folder / "onnx" / entry.name).symlink_to(entry.resolve())
        for name, f in candidates.items():
            (folder / "onnx" / f"model_q4_{name}.onnx").symlink_to(Path(f).resolve())
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    def peer(mode: str, source: Path, *extra: str):
        return lambda: run_peer(sys.executable, mode, source, work, len(PROMPT), args.new_tokens, args.repeats, *extra)

    def ours(path: Path):
        return lambda: bench_model(path, PROMPT, len(PROMPT), args.new_tokens, args.repeats, 1)

    models = {
        "genai on our folder, fp32": peer("genai-ours", folder, "onnx/model.onnx"),
        "genai on its own export, fp32": peer("genai-fp32", student),
        "our loop, our fp32 file": ours(folder / "onnx" / "model.onnx"),
        "genai on our folder, int4 (model_q4)": peer("genai-ours", folder, "onnx/model_q4.onnx"),
        "genai on its own export, int4": peer("genai-int4", student),
        "our loop, our int4 file (model_q4)": ours(folder / "onnx" / "model_q4.onnx"),
        **{f"genai on our folder, int4 candidate {name}": peer("genai-ours", folder, f"onnx/model_q4_{name}.onnx")
           for name in candidates},
    }
    rounds: dict[str, list[dict]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name, measure in models.items():
            print(f"bench_genai: round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            rounds[name].append(measure())
    results = {name: median_round(rs) for name, rs in rounds.items()}
    get = lambda name: results[name].get("decode_tokens_per_s")  # noqa: E731
    ratios = {}
    for p, own in (("fp32", "genai on its own export, fp32"), ("int4", "genai on its own export, int4")):
        mine = next(n for n in results if n.startswith(f"genai on our folder, {p}") and "candidate" not in n)
        loop = next(n for n in results if n.startswith(f"our loop, our {p}"))
        ratios[f"genai {p}: our folder / its own export (goal >= 1)"] = ratio(get(mine), get(own))
        ratios[f"{p}: our loop / genai on our folder"] = ratio(get(loop), get(mine))
        ratios[f"genai {p}: same first 16 ids on our folder as on its export"] = (
            results[mine].get("tokens") == results[own].get("tokens") if results[mine].get("tokens") else None)
    for name in candidates:
        ratios[f"genai int4: candidate {name} / its own export"] = ratio(
            get(f"genai on our folder, int4 candidate {name}"), get("genai on its own export, int4"))
    import onnxruntime_genai as og

    record = {
        "command": "python scripts/bench_genai.py --run RUN" + "".join(
            f" --{k} {v}" for k, v in (("rounds", args.rounds), ("repeats", args.repeats),
                                       ("new-tokens", args.new_tokens))) + "".join(f" --q4 {q}" for q in args.q4),
        "q4_candidates": candidates,
        "folder": str(folder), "student": str(student), "onnxruntime_genai": og.__version__,
        "prompt_tokens": len(PROMPT), "new_tokens": args.new_tokens, "threads": 1, "rounds": args.rounds,
        "models": results, "ratios": ratios,
        "machine": machine(load_before),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(args.json, record)
    for name, m in results.items():
        tok_s = m.get("decode_tokens_per_s")
        print(f"{name:<40} " + (f"decode {tok_s:7.1f} tok/s  TTFT {m.get('ttft_ms', 0):6.1f} ms  "
                                 f"{(m.get('bytes') or 0) / 1e6:6.1f} MB" if tok_s else f"not measured: {m['reason']}"))
    for k, v in ratios.items():
        print(f"{k}: {v}")
    print(f"written to {args.json}")


def ratio(a, b):
    return round(a / b, 3) if a and b else None


if __name__ == "__main__":
    main()
