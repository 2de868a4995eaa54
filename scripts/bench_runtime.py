"""Host runtime benchmark, llama-bench style: our ONNX graphs beside the runtimes users would otherwise use, on the
same weights, in one run.

    python scripts/bench_runtime.py --run RUN_DIR [--rounds 3] [--repeats 3] [--new-tokens 32]
                                    [--peers-venv-genai DIR] [--peers-venv-optimum DIR] [--skip-teacher-gqa]

RUN_DIR is a finished `edgedistil build` run folder (distill/student, export/{student,teacher}).
Measured, each model in its own process, 1 thread, spinning off, every model once per round in turn (round-robin,
so a slow stretch of a shared machine hits them all), keeping each model's median round: pp64/pp256 prefill,
decode at depths 0/128/512 (null where the cache is too short), TTFT, load time, peak RSS, file size, CPU-ms per
token; for
- ours: student fp32 (full cache), int8 (dynamic, MatMulInteger), int4 (MatMulNBits, block 32, GPTQ, every MatMul
  4-bit like genai's, not the stage's 8-bit head and down_proj), and the in-place
  "gqa" layout in fp32, int4 (embedding: an int8 lookup) and int8_wo (MatMulNBits 8-bit, GPTQ and smoothing, int8
  embedding lookup: the int8 that holds the int8 fidelity floor); the teacher fp32 (full and gqa);
- PyTorch eager (transformers generate, greedy), onnxruntime-genai (its model builder, fp32 and int4, own venv) and
  Optimum's ORTModelForCausalLM (own venv), through edgedistil/bench/peers.py; a missing venv is recorded as such.
onnxruntime-genai and its model builder run in our own venv (pyproject pins them); Optimum runs in the venv the onnx
target's check sets up in the cache (its transformers pin clashes with ours).
genai on the folder we ship is scripts/bench_genai.py.
Also measures memory bandwidth (numpy copy) for the int8 decode's bandwidth floor. Writes
docs/results/runtime_default.json and the "Host runtime (ONNX)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from edgedistil.bench.genai import median_round
from edgedistil.bench.genai import run_peer as peer
from edgedistil.bench.ort import bench_model
from edgedistil.errors import atomic_file, write_json

REPO = Path(__file__).resolve().parent.parent


def memory_bandwidth() -> dict:
    """numpy copy of a 256 MB buffer (read + write), best of 5: the same kind of traffic as streaming weights."""
    a = np.ones(32 * 1024 * 1024)
    b = np.empty_like(a)
    copy = min(_time(lambda: np.copyto(b, a)) for _ in range(5))
    read = min(_time(lambda: a.sum()) for _ in range(5))
    return {"copy_gb_per_s": round(2 * a.nbytes / copy / 1e9, 2), "read_gb_per_s": round(a.nbytes / read / 1e9, 2),
            "method": "numpy copyto / sum over 256 MB float64, best of 5"}


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def our_models(run: Path, work: Path, with_teacher_gqa: bool) -> dict[str, Path]:
    """The graphs to bench; int4 and gqa variants are made here from the run's exports when absent, quantized as the
    quantize stage does (GPTQ on the run's held-out text)."""
    from edgedistil.build import Run
    from edgedistil.config import load_recipe
    from edgedistil.export.gqa import build_gqa_graph
    from edgedistil.model import load_hf_folder
    from edgedistil.quantize.onnx import quantize_file
    import onnx

    heldout = Run(out=run, recipe=load_recipe(None)).heldout_ids()
    int8 = work / "student-int8.onnx"
    if not int8.is_file():
        quantize_file(run / "export/student/model.onnx", int8, "int8", [], 32, heldout, 64)
    models = {"ours fp32 (full cache)": run / "export/student/model.onnx", "ours int8 dynamic (full cache)": int8}
    int4 = work / "student-int4.onnx"
    if not int4.is_file():
        quantize_file(run / "export/student/model.onnx", int4, "int4", ["embed_tokens"], 32, heldout, 64,
                      eight_bit=())  # every MatMul 4-bit, as genai's int4
    models["ours int4 (full cache)"] = int4
    max_len = onnx.load(str(run / "export/student/model.onnx"), load_external_data=False).graph.input[2] \
        .type.tensor_type.shape.dim[3].dim_value
    for role, hf in (("student", run / "distill/student"), ("teacher", Path(json.loads(
            (run / "export/teacher/record.json").read_text())["source"]["model_dir"]))):
        if role == "teacher" and not with_teacher_gqa:
            continue
        path = work / f"{role}-gqa.onnx"
        if not path.is_file():
            onnx.save(build_gqa_graph(load_hf_folder(hf, max_len=max_len).eval(), max_len), str(path))
        models[f"{'ours' if role == 'student' else 'teacher'} fp32 (gqa, in place)"] = path
    gqa4 = work / "student-gqa-int4.onnx"
    if not gqa4.is_file():
        quantize_file(work / "student-gqa.onnx", gqa4, "int4", [], 32, heldout, 64, eight_bit=())  # int8 lookup
    models["ours int4 (gqa, in place)"] = gqa4
    gqa8 = work / "student-gqa-int8_wo.onnx"
    if not gqa8.is_file():
        quantize_file(work / "student-gqa.onnx", gqa8, "int8_wo", [], 32, heldout, 64)
    models["ours int8_wo (gqa, in place)"] = gqa8
    models["teacher fp32 (full cache)"] = run / "export/teacher/model.onnx"
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every model once per round, round-robin, and keep each model's median round")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--peers-venv-genai", default=sys.prefix,
                    help="a venv with onnxruntime-genai and its builder's needs (default: ours, which pins them)")
    ap.add_argument("--peers-venv-optimum", default=None,
                    help="a venv with Optimum (default: the one the onnx target's check sets up in the cache)")
    ap.add_argument("--skip-teacher-gqa", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/runtime_default.json")
    ap.add_argument("--render", action="store_true", help="only recompute ratios and the table from --out")
    args = ap.parse_args()
    if args.render:
        record = json.loads(args.out.read_text())
        record["ratios"] = ratios(record)
        write_json(args.out, record)
        print(render(record))
        write_section(REPO / "docs/benchmarks.md", render(record), record)
        return
    if args.peers_venv_optimum is None:
        from edgedistil.convert.hf_consumers import optimum_python

        args.peers_venv_optimum = str(optimum_python(log=print).parent.parent)
    t_start = time.perf_counter()
    work = Path(os.environ.get("EDGEDISTIL_CACHE", Path.home() / ".cache/edgedistil")) / "bench-runtime"
    work.mkdir(parents=True, exist_ok=True)
    record = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
              f"{platform.processor() or 'cpu'}", "loadavg_start": os.getloadavg(), "threads": 1,
              "memory_bandwidth": memory_bandwidth(), "models": {}}
    prompt = [(7 * i + 3) % 97 + 100 for i in range(64)]
    hf = args.run / "distill/student"
    runs = {name: (lambda path=path: bench_model(path, prompt, 64, args.new_tokens, args.repeats, 1, (64, 256),
                                                 (0, 128, 512)))
            for name, path in our_models(args.run, work, not args.skip_teacher_gqa).items()}
    for name, python, mode in (("PyTorch eager (HF generate)", sys.executable, "torch"),
                               ("onnxruntime-genai fp32", f"{args.peers_venv_genai}/bin/python", "genai-fp32"),
                               ("onnxruntime-genai int4", f"{args.peers_venv_genai}/bin/python", "genai-int4"),
                               ("Optimum ORTModelForCausalLM fp32", f"{args.peers_venv_optimum}/bin/python",
                                "optimum")):
        runs[name] = lambda python=python, mode=mode: peer(python, mode, hf, work / "peers", 64, args.new_tokens,
                                                           args.repeats)
    # round-robin: a slow stretch of a shared machine then hits every model once, not one model's whole run
    rounds: dict[str, list[dict]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, measure in runs.items():
            print(f"bench: round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            rounds[name].append(measure())
    record["rounds"] = args.rounds
    record["models"] = {name: median_round(results) for name, results in rounds.items()}
    record["loadavg_end"] = os.getloadavg()
    record["seconds"] = round(time.perf_counter() - t_start, 1)
    record["ratios"] = ratios(record)
    write_json(args.out, record)
    table = render(record)
    print(table)
    write_section(REPO / "docs/benchmarks.md", table, record)


def decode(m: dict) -> float | None:
    """Decode tok/s after a 64-token prompt, the same schedule for ours and the peers."""
    return m.get("decode_tokens_per_s")


def cpu_ms(m: dict) -> float | None:
    """CPU-ms per decoded token: ours at depth 0 (llama_bench), peers after their 64-token prompt."""
    return (m.get("llama_bench", {}).get("tg32@d0") or {}).get("cpu_ms_per_token") or m.get("cpu_ms_per_token")


def ratios(record: dict) -> dict:
    ms = record["models"]
    get = lambda name: decode(ms.get(name) or {})  # noqa: E731
    int8, teacher = get("ours int8 dynamic (full cache)"), get("teacher fp32 (full cache)")
    pairs = {"int8 student / fp32 teacher (goal >= 4)": (int8, teacher),
             "ours fp32 gqa / genai fp32 (goal >= 1)": (get("ours fp32 (gqa, in place)"),
                                                        get("onnxruntime-genai fp32")),
             "ours int4 gqa / genai int4 (goal >= 1)": (get("ours int4 (gqa, in place)"),
                                                        get("onnxruntime-genai int4")),
             "ours fp32 gqa / Optimum fp32 (goal >= 1.5)": (get("ours fp32 (gqa, in place)"),
                                                            get("Optimum ORTModelForCausalLM fp32")),
             "ours int8 / PyTorch eager (goal >= 3)": (int8, get("PyTorch eager (HF generate)"))}
    out = {k: (round(a / b, 2) if a and b else None) for k, (a, b) in pairs.items()}
    # the same ratios in CPU time per token (peer / ours): steadier than wall tok/s when other jobs share the CPU
    for k, (a, b) in pairs.items():
        names = [n for n, m in ms.items() if decode(m or {}) in (a, b) and a and b]
        if len(names) == 2:
            ours, other = (ms[n] for n in names)
            ca, cb = cpu_ms(ours), cpu_ms(other)
            out[k.replace(" (goal", " in CPU-ms/token (goal")] = round(cb / ca, 2) if ca and cb else None
    for label, name in (("int8", "ours int8 dynamic (full cache)"),
                        ("int8_wo gqa", "ours int8_wo (gqa, in place)")):
        m8, tok_s = ms.get(name) or {}, get(name)
        if tok_s and m8.get("bytes"):
            floor_ms = m8["bytes"] / (record["memory_bandwidth"]["read_gb_per_s"] * 1e9) * 1e3
            out[f"{label} decode ms / bandwidth floor ms (goal <= 1.5)"] = round((1e3 / tok_s) / floor_ms, 2)
            out[f"{label} bandwidth floor ms/token (file bytes / read bandwidth)"] = round(floor_ms, 2)
    gqa8 = get("ours int8_wo (gqa, in place)")
    if gqa8 and teacher:
        out["int8_wo gqa student / fp32 teacher (goal >= 4)"] = round(gqa8 / teacher, 2)
    return out


def render(record: dict) -> str:
    cols = ["pp64", "pp256", "tg32@d0", "tg32@d128", "tg32@d512"]
    lines = ["| model | size MB | load s | TTFT ms | decode tok/s (after 64) | "
             + " | ".join(f"{c} tok/s" for c in cols) + " | CPU-ms/token | peak RSS MB |",
             "|" + "---|" * (len(cols) + 7)]
    for name, m in record["models"].items():
        if m.get("value", 0) is None:
            lines.append(f"| {name} | not measured: {m['reason']} |" + " |" * (len(cols) + 5))
            continue
        lb = m.get("llama_bench", {})
        cells = [f"{lb[c]['tokens_per_s']:.1f}" if lb.get(c, {}).get("tokens_per_s") else
                 ("n/a (cache)" if c in lb else "-") for c in cols]
        cpu = lb.get("tg32@d0", {}).get("cpu_ms_per_token", m.get("cpu_ms_per_token"))
        lines.append(f"| {name} | {m.get('bytes', 0) / 1e6:.0f} | {m.get('load_seconds', 0):.2f} | "
                     f"{m.get('ttft_ms', 0):.0f} | {m['decode_tokens_per_s']:.1f} | " + " | ".join(cells)
                     + f" | {cpu:.1f} | {m.get('peak_memory_mb', 0):.0f} |")
    lines.append("")
    lines += [f"- {k}: {v}" for k, v in record["ratios"].items()]
    return "\n".join(lines)


def write_section(path: Path, table: str, record: dict) -> None:
    header = "## Host runtime (ONNX)"
    bw = record["memory_bandwidth"]
    body = (f"{header}\n\nMachine: {record['machine']}; load average {record['loadavg_start'][0]:.1f} at start, "
            f"{record['loadavg_end'][0]:.1f} at end (other jobs share the CPU: CPU-ms per token is the steadier "
            f"figure). One thread, spinning off; {record.get('rounds', 1)} round-robin round(s), each model's median "
            f"round shown. Memory bandwidth: {bw['copy_gb_per_s']} GB/s copy, "
            f"{bw['read_gb_per_s']} GB/s read. Command: `{record['command']}` ({record['seconds']:.0f} s). "
            f"Figures: `docs/results/runtime_default.json`.\n\n{table}\n")
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    text = re.sub(rf"{re.escape(header)}\n.*?(?=\n## |\Z)", "", text, flags=re.S).rstrip() + "\n\n" + body
    with atomic_file(path) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
