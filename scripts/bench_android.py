"""Measure litert-torch's peak memory while converting, the figure behind the android pre-flight's estimate.

    python scripts/bench_android.py --run RUN          # the student of RUN (a build's --out) and the embedded teacher
    python scripts/bench_android.py --run RUN --int8-schemes   # int8 schemes on RUN's fp32 .tflite, by fidelity

Each conversion (fp32 and dynamic int8, prefill + decode signatures) runs in a fresh process; its peak resident set
(VmHWM) and wall time are written to docs/results/android_converter_memory.json (or --json PATH), beside the
estimate edgedistil.convert.android.converter_peak_bytes gives for the same parameter count.

--int8-schemes quantizes RUN's litert/student/fp32/model.tflite with ai-edge-quantizer in several int8 schemes and
measures each like the convert stage does (LiteRT against the fp32 PyTorch student on 16 held-out segments), and
times its decode (1 thread) and peak memory in a fresh process, one after the other in one run, with the fp32 file
as the first row; written to docs/results/android_int8_schemes.json: the search for a scheme that meets the int8
floors, and what each costs in speed and memory. The GPTQ row converts RUN's student itself (GPTQ-rounded in
PyTorch on held-out text between the scored segments), as the convert stage does.

--int8-rounding compares weight-only int8 roundings (nearest, GPTQ, GPTQ in act order) and which matrices stay fp16,
on RUN's student in PyTorch with the file's numerics: int8 per row on the narrow grid, the kept matrices through fp16
(LiteRT on a converted file computes the same logits within 2e-3: tests/test_android.py). Minutes, no conversion;
written to docs/results/android_int8_rounding.json.

--cli-chat runs the stock CLI on the shipped file, as an Android developer would try it on a desktop first:
`litert-lm run RUN/dist/android/model.litertlm --prompt MESSAGE --backend cpu --cache memory` for a few chat
messages (the CLI renders them through the file's own chat template; `--cache memory` keeps its weight cache out of
dist/android), beside the fp32 PyTorch student's greedy reply to the same
message through transformers' template; written to docs/results/android_litertlm_cli.json.

--litert-torch builds the .litertlm the other way issue 19 names: litert-torch's own `export_hf` (HF folder in,
.litertlm out, its own signatures, cache layout, metadata and quantization recipes), for RUN's student and the
embedded teacher, beside the files RUN's build made with litert-torch's converter and litert-lm-builder. Each file
is checked through LiteRT-LM against the fp32 PyTorch model (greedy tokens on held-out prompts and one chat turn),
then all are benchmarked by LiteRT-LM in round-robin rounds on the same threads; written to
docs/results/android_litertlm_paths.json.

--litertlm-vs-host times LiteRT-LM's benchmark on RUN's shipped .litertlm against our CompiledModel loop on the
.tflite inside it, at 1, 2 and 4 threads, LiteRT-LM with and without its XNNPACK weight cache, every setting once
per round (round robin), the same 64-token prompt and decode length; written to
docs/results/android_litertlm_vs_host.json. It is why bench[android] caps the headline threads at the machine's
cores and keeps the weight cache on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CONVERT = """
import sys, torch
from edgedistil.convert.android import convert_tflite
from edgedistil.bench.ort_worker import status_mb
from edgedistil.model import load_hf_folder
model = load_hf_folder(sys.argv[1], max_len=256).eval()
convert_tflite(model, sys.argv[2], sys.argv[3], prefill_len=64, max_len=256)
print(sum(p.numel() for p in model.parameters()), status_mb("VmHWM"))
"""



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a build's run folder (its distill/student is converted)")
    ap.add_argument("--variants", default="fp32,dynamic_int8")
    ap.add_argument("--int8-schemes", action="store_true", help="compare int8 schemes instead (see above)")
    ap.add_argument("--int8-rounding", action="store_true",
                    help="compare weight-only int8 roundings and kept matrices in PyTorch (see above)")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "android_converter_memory.json"))
    ap.add_argument("--cli-chat", action="store_true", help="chat through `litert-lm run` on RUN's bundle (see above)")
    ap.add_argument("--litert-torch", action="store_true",
                    help="litert-torch's export_hf against the build's litert-lm-builder files (see above)")
    ap.add_argument("--litertlm-vs-host", action="store_true",
                    help="LiteRT-LM against our loop per thread count and weight-cache setting (see above)")
    ap.add_argument("--threads", type=int, default=1, help="--litert-torch: LiteRT-LM's CPU threads")
    ap.add_argument("--rounds", type=int, default=3, help="--litert-torch, --litertlm-vs-host: round-robin rounds")
    ap.add_argument("--decode-tokens", type=int, default=128, help="--litertlm-vs-host: decode steps per run")
    args = ap.parse_args()
    if args.litertlm_vs_host:
        return litertlm_vs_host(Path(args.run), Path(args.json).with_name("android_litertlm_vs_host.json")
                                if args.json.endswith("android_converter_memory.json") else Path(args.json),
                                args.rounds, args.decode_tokens)
    if args.litert_torch:
        return litertlm_paths(Path(args.run), Path(args.json).with_name("android_litertlm_paths.json")
                              if args.json.endswith("android_converter_memory.json") else Path(args.json),
                              args.threads, args.rounds)
    if args.cli_chat:
        return cli_chat(Path(args.run), Path(args.json).with_name("android_litertlm_cli.json")
                        if args.json.endswith("android_converter_memory.json") else Path(args.json))
    if args.int8_rounding:
        return int8_rounding(Path(args.run), Path(args.json).with_name("android_int8_rounding.json")
                             if args.json.endswith("android_converter_memory.json") else Path(args.json))
    if args.int8_schemes:
        return int8_schemes(Path(args.run), Path(args.json).with_name("android_int8_schemes.json")
                            if args.json.endswith("android_converter_memory.json") else Path(args.json))

    from edgedistil.convert.android import converter_peak_bytes
    from edgedistil.sources import embedded_teacher

    models = {"student": Path(args.run) / "distill" / "student", "teacher": embedded_teacher(log=lambda m: None)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for role, folder in models.items():
            for variant in args.variants.split(","):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", CONVERT, str(folder), variant,
                                       str(Path(tmp) / f"{role}-{variant}.tflite")], capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{role} {variant}: {proc.stderr[-2000:]}")
                params, peak_mb = proc.stdout.split()[-2:]
                row = {"model": role, "variant": variant, "parameters": int(params), "peak_rss_mb": round(float(peak_mb)),
                       "estimate_mb": round(converter_peak_bytes(int(params)) / 1e6),
                       "seconds": round(time.perf_counter() - t0, 1),
                       "tflite_mb": round((Path(tmp) / f"{role}-{variant}.tflite").stat().st_size / 1e6, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"command": "python scripts/bench_android.py " + " ".join(sys.argv[1:]), "machine": platform.machine(),
           "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


def litertlm_vs_host(run: Path, dest: Path, rounds: int, decode_tokens: int) -> None:
    import statistics
    from importlib import metadata

    from edgedistil.bench.litert import _worker, litertlm_runs
    from edgedistil.targets import fixed_prompt

    bundle = run / "dist" / "android"
    lm, tflite = bundle / "model.litertlm", bundle / "model.tflite"
    if not lm.is_file():
        sys.exit(f"{lm} does not exist: build RUN with `edgedistil build --target android --out {run}` first")
    prompt = fixed_prompt(64)
    settings = [(t, kind) for t in (1, 2, 4) for kind in ("host loop", "LiteRT-LM, no weight cache",
                                                          "LiteRT-LM, weight cache")]
    rates = {f"{t} thread(s) / {kind}": [] for t, kind in settings}
    loadavg_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgedistil-litertlm-cache-") as cache:
        litertlm_runs(lm, len(prompt), decode_tokens, 1, 1, cache)  # writes the weight cache; not counted
        for r in range(rounds):
            for t, kind in settings:
                if kind == "host loop":
                    raw = _worker({"model": str(tflite), "threads": t, "prompt": prompt, "new_tokens": decode_tokens,
                                   "repeats": 1, "binding": "resident"})
                else:
                    raw = litertlm_runs(lm, len(prompt), decode_tokens, 1, t,
                                        cache if kind.endswith(", weight cache") else None)
                rates[f"{t} thread(s) / {kind}"].append(round(raw["runs"][0]["decode_tokens_per_s"], 2))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    rows = []
    for t, kind in settings:
        key = f"{t} thread(s) / {kind}"
        host = rates[f"{t} thread(s) / host loop"]
        row = {"threads": t, "runtime": kind, "decode_tokens_per_s": round(statistics.median(rates[key]), 2),
               "per_round": rates[key]}
        if kind != "host loop":  # the median of per-round ratios to our loop at the same threads
            row["vs_host_loop"] = round(statistics.median(a / b for a, b in zip(rates[key], host)), 3)
        rows.append(row)
        print(f"{key}: {row['decode_tokens_per_s']:.1f} tok/s" +
              (f", {row['vs_host_loop']:.3f}x our loop" if "vs_host_loop" in row else ""), flush=True)
    out = {"command": "python scripts/bench_android.py --run RUN --litertlm-vs-host " +
                      f"--rounds {rounds} --decode-tokens {decode_tokens}",
           "file": {"litertlm": str(lm), "bytes": lm.stat().st_size},
           "runtimes": {"host loop": "ai-edge-litert CompiledModel, cache resident in two swapped TensorBuffer sets",
                        "LiteRT-LM": f"litert_lm.Benchmark (litert-lm-api {metadata.version('litert-lm-api')}), CPU"},
           "machine": {"arch": platform.machine(), "cpus": os.cpu_count(),
                       "loadavg_1m_before": round(loadavg_before[0], 2),
                       "loadavg_1m_after": round(os.getloadavg()[0], 2)},
           "prompt_tokens": len(prompt), "decode_tokens": decode_tokens, "rounds": rounds, "rows": rows}
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


CLI_MESSAGES = ("What is the capital of France?", "What can you tell me about the sea?",
                "Write a short poem about the moon.")


def cli_chat(run: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bundle = run / "dist" / "android" / "model.litertlm"
    student = run / "distill" / "student"
    if not bundle.is_file():
        sys.exit(f"{bundle} does not exist: run `edgedistil build --target android --out {run}` first")
    cli = shutil.which("litert-lm") or str(Path(sys.executable).parent / "litert-lm")
    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, use_safetensors=True).float().eval()
    import re

    manifest = json.loads((run / "dist" / "android" / "manifest.json").read_text())
    max_len = int(re.search(r"max_num_tokens: (\d+)", manifest["litertlm"]["llm_metadata"]).group(1))
    rows = []
    for message in CLI_MESSAGES:
        t0 = time.perf_counter()
        # --cache memory: the weight cache an app keeps in its cacheDir, without writing a file into dist/android
        proc = subprocess.run([cli, "run", str(bundle), "--prompt", message, "--backend", "cpu", "--cache", "memory"],
                              capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - t0
        ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=max_len - ids.shape[1],
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        reference = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        reply = proc.stdout.strip()
        common = next((i for i, (a, b) in enumerate(zip(reply, reference)) if a != b), min(len(reply), len(reference)))
        rows.append({"message": message, "exit_code": proc.returncode, "seconds": round(seconds, 2),
                     "reply": reply, "stderr_tail": proc.stderr.strip()[-400:] if proc.returncode else "",
                     "pytorch_fp32_reply": reference, "reply_equal_pytorch": reply == reference,
                     "common_prefix_chars": common})
        print(json.dumps(rows[-1], ensure_ascii=False)[:600], flush=True)
    from importlib import metadata

    out = {"command": "python scripts/bench_android.py --run RUN --cli-chat",
           "cli": f"litert-lm {metadata.version('litert-lm')} run MODEL --prompt MESSAGE --backend cpu "
                  "--cache memory",
           "bundle": str(bundle), "variant": manifest["quantization"]["method"], "max_num_tokens": max_len,
           "reference": "fp32 PyTorch student, greedy through transformers' chat template, to its end of turn or "
                        "the cache length", "machine": platform.machine(), "rows": rows}
    dest.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {dest}")


# litert-torch 0.10.0's export_hf imports TensorFlow's flatbuffer schema for an unrelated model (bonsai_flux2); the
# same generated module ships in ai-edge-litert, so it is aliased rather than installing TensorFlow. torch._dynamo
# is imported first: its trace rules probe for a real tensorflow package.
EXPORT_HF = """
import importlib, importlib.machinery, json, sys, time, types
import torch._dynamo
schema = importlib.import_module("ai_edge_litert.schema_py_generated")
for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
    m = sys.modules.setdefault(name, types.ModuleType(name))
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
sys.modules["tensorflow.lite.python"].schema_py_generated = schema
sys.modules["tensorflow.lite.python.schema_py_generated"] = schema
from litert_torch.generative.export_hf.export import export
from edgedistil.bench.ort_worker import status_mb
t0 = time.perf_counter()
export(model=sys.argv[1], output_dir=sys.argv[2], prefill_lengths=[int(sys.argv[4])], cache_length=int(sys.argv[5]),
       quantization_recipe=sys.argv[3])
print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(status_mb("VmHWM"))}))
"""
# litert-torch's recipe names for the build's variants; dynamic_wi8_afp32 is export_hf's default
EXPORT_HF_RECIPES = {"fp32": "none", "weight_only_int8": "weight_only_wi8_afp32", "dynamic_int8": "dynamic_wi8_afp32"}


def litertlm_paths(run: Path, dest: Path, threads: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="litert-torch-export-") as tmp:  # the exports go, however it ends
        compare_litertlm_paths(run, dest, threads, rounds, Path(tmp))


def compare_litertlm_paths(run: Path, dest: Path, threads: int, rounds: int, out_dir: Path) -> None:
    import statistics
    from importlib import metadata

    from tokenizers import Tokenizer

    from edgedistil.bench.litert import bench_litertlm
    from edgedistil.config import load_recipe
    from edgedistil.convert.litertlm import check_in_litertlm, read_litertlm
    from edgedistil.distill.data import tokenize
    from edgedistil.model import load_hf_folder
    from edgedistil.runtimes.torch_step import TorchLM
    from edgedistil.sources import embedded_teacher

    folders = {"student": run / "distill" / "student", "teacher": embedded_teacher(log=lambda m: None)}
    export = load_recipe(None).export  # the build's export settings, so both paths make the same signatures
    prefill_len, max_len = export.prefill_len, export.max_len
    files = {}  # (path, role, variant) -> .litertlm
    for role, variant in (("student", "fp32"), ("student", "weight_only_int8"), ("teacher", "weight_only_int8")):
        ours = run / "litert" / role / variant / "model.litertlm"
        if not ours.is_file():
            sys.exit(f"{ours} does not exist: build RUN with `edgedistil build --target android --out {run}` first")
        files[("litert-lm-builder", role, variant)] = ours
    exports = {}
    for role, variant in (("student", "fp32"), ("student", "weight_only_int8"), ("student", "dynamic_int8"),
                          ("teacher", "weight_only_int8"), ("teacher", "dynamic_int8")):
        folder = out_dir / f"{role}-{variant}"
        proc = subprocess.run([sys.executable, "-c", EXPORT_HF, str(folders[role]), str(folder),
                               EXPORT_HF_RECIPES[variant], str(prefill_len), str(max_len)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"litert-torch export_hf, {role} {variant}: {proc.stderr[-2000:]}")
        exports[f"{role}/{variant}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        files[("litert-torch export_hf", role, variant)] = folder / "model.litertlm"
        print(f"export_hf {role} {variant}: {exports[f'{role}/{variant}']}", flush=True)

    tokenizer = Tokenizer.from_file(str(folders["student"] / "tokenizer.json"))
    heldout_ids = tokenize(tokenizer, (run / "distill" / "heldout.txt").read_text())
    references = {role: TorchLM(load_hf_folder(folder, max_len=max_len), max_len) for role, folder in folders.items()}
    rows = {}
    for (path_name, role, variant), path in files.items():
        key = f"{path_name} / {role} / {variant}"
        sections = read_litertlm(path)
        try:
            check, chat_error = check_in_litertlm(path, folders[role], references[role], heldout_ids, prefill_len), None
        except RuntimeError as e:  # LiteRT-LM's conversation fails on the file's template: the raw prompts alone
            check = check_in_litertlm(path, folders[role], references[role], heldout_ids, prefill_len, chat=False)
            chat_error = f"the chat turn failed in LiteRT-LM: {e}"
        rows[key] = {"path": path_name, "role": role, "variant": variant, "file": str(path),
                     "bytes": path.stat().st_size, "sections": sections["sections"],
                     "llm_metadata": sections["llm_metadata"][:3000],
                     "litertlm_check": {k: check[k] for k in ("tokens_matching", "reference_tokens", "all_equal")},
                     "chat_error": chat_error,
                     "prompts": [{k: p.get(k) for k in ("kind", "prompt_tokens", "runtime_prompt_tokens",
                                                         "tokens_matching", "reference_tokens", "text_equal")}
                                 for p in check["prompts"]],
                     "rounds": []}
        print(f"{key}: {path.stat().st_size / 1e6:.1f} MB, LiteRT-LM greedy {check['tokens_matching']}/"
              f"{check['reference_tokens']} as fp32 PyTorch" + (f"; {chat_error}" if chat_error else ""), flush=True)
    del references
    loadavg_before = os.getloadavg()
    for _ in range(rounds):  # round robin, so a slow spell of the machine falls on every file alike
        for row in rows.values():
            row["rounds"].append(bench_litertlm(Path(row["file"]), 64, 32, 3, threads))
    for key, row in rows.items():
        for m in ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "init_seconds", "peak_memory_mb"):
            row[m] = round(statistics.median(r[m] for r in row["rounds"]), 3)
        print(f"{key}: decode {row['decode_tokens_per_s']:.1f} tok/s, prefill {row['prefill_tokens_per_s']:.0f}, "
              f"TTFT {row['ttft_ms']:.0f} ms, init {row['init_seconds']:.2f} s, peak {row['peak_memory_mb']:.0f} MB",
              flush=True)

    def decode(path_name, role, variant):
        return rows[f"{path_name} / {role} / {variant}"]["decode_tokens_per_s"]

    ratios = {}
    for variant in ("fp32", "weight_only_int8"):
        ratios[f"student {variant}: export_hf / litert-lm-builder decode"] = round(
            decode("litert-torch export_hf", "student", variant) / decode("litert-lm-builder", "student", variant), 3)
    for path_name in ("litert-lm-builder", "litert-torch export_hf"):
        ratios[f"{path_name}, weight_only_int8: student / teacher decode (goal >= 2.5)"] = round(
            decode(path_name, "student", "weight_only_int8") / decode(path_name, "teacher", "weight_only_int8"), 3)
    ratios["litert-torch export_hf, dynamic_int8 (its default): student / teacher decode (goal >= 2.5)"] = round(
        decode("litert-torch export_hf", "student", "dynamic_int8")
        / decode("litert-torch export_hf", "teacher", "dynamic_int8"), 3)
    command = "python scripts/bench_android.py --run RUN --litert-torch" + (
        f" --threads {threads}" if threads != 1 else "") + (f" --rounds {rounds}" if rounds != 3 else "")
    out = {"command": command,
           "versions": {n: metadata.version(n) for n in ("litert-torch", "litert-lm-api", "litert-lm-builder",
                                                          "ai-edge-quantizer")},
           "export_hf": {"settings": {"prefill_lengths": [prefill_len], "cache_length": max_len,
                                      "recipes": EXPORT_HF_RECIPES}, "runs": exports},
           "benchmark": {"runtime": "LiteRT-LM benchmark (litert_lm.Benchmark), CPU", "threads": threads,
                         "prefill_tokens": 64, "decode_tokens": 32, "repeats_per_round": 3, "rounds": rounds,
                         "loadavg_before": [round(x, 2) for x in loadavg_before],
                         "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
           "check": "LiteRT-LM greedy tokens against the fp32 PyTorch model: two held-out prompts (shorter and longer "
                    "than a prefill chunk) and one chat turn, 32 tokens each (edgedistil.convert.litertlm)",
           "files": rows, "ratios": ratios, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(ratios, indent=1))
    print(f"wrote {dest}")


def int8_rounding(run: Path, dest: Path) -> None:
    import torch

    from edgedistil.build import Run
    from edgedistil.config import load_recipe
    from edgedistil.convert.android import GPTQ_SKIP
    from edgedistil.fidelity import measure_fidelity
    from edgedistil.model import load_hf_folder
    from edgedistil.quantize.torch_gptq import gptq_int8_rows
    from edgedistil.runtimes.torch_step import TorchLM

    heldout = Run(out=run, recipe=load_recipe(None)).heldout_ids()
    student = load_hf_folder(run / "distill" / "student", max_len=256).eval()
    reference = TorchLM(student, 256)
    schemes = {  # name: (kept fp16 besides the vocabulary matrix, act order, nearest)
        "nearest, down_proj fp16": (("down_proj",), False, True),
        "nearest, down_proj and v_proj fp16": (("down_proj", "v_proj"), False, True),
        "GPTQ, down_proj fp16": (("down_proj",), False, False),
        "GPTQ act order, down_proj fp16": (("down_proj",), True, False),
        "GPTQ act order, nothing else fp16": ((), True, False),
        "GPTQ act order, down_proj and o_proj fp16": (("down_proj", "o_proj"), True, False),
        "GPTQ act order, down_proj and layer 0 fp16": (("down_proj", "layers.0."), True, False),
        f"GPTQ act order, {' and '.join(GPTQ_SKIP[1:])} fp16 (shipped)": (GPTQ_SKIP[1:], True, False),
    }
    rows = []
    for name, (kept, act_order, nearest) in schemes.items():
        rounded, _ = gptq_int8_rows(student, heldout, 64, 256, ("lm_head", *kept), act_order=act_order,
                                    nearest=nearest)
        params = 0
        with torch.no_grad():  # what the file keeps fp16
            for pname, p in rounded.named_parameters():
                if "embed_tokens" in pname or any(part in pname for part in kept):
                    p.copy_(p.half().float())
                    params += p.numel() if "embed_tokens" not in pname else 0
        f = measure_fidelity(reference, TorchLM(rounded, 256), heldout, 64, segments=16, greedy_tokens=64)
        row = {"scheme": name, "fp16_weights_besides_vocabulary": params,
               **{k: round(f[k], 4) if isinstance(f[k], float) and k != "kl_mean" else f[k]
                  for k in ("top1_agreement", "kl_mean", "greedy_tokens_matching", "near_tie_share",
                            "top1_agreement_outside_near_ties")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    dest.write_text(json.dumps({"command": "python scripts/bench_android.py --run RUN --int8-rounding",
                                "student": str(run / "distill" / "student"),
                                "floors": {"top1_agreement_min": 0.98, "kl_mean_max": 0.02}, "rows": rows},
                               indent=2) + "\n")
    print(f"wrote {dest}")


def int8_schemes(run: Path, dest: Path) -> None:
    import torch
    from ai_edge_quantizer import quantizer, qtyping

    from edgedistil.build import Run
    from edgedistil.convert.android import _bytes_tensor_names, convert_tflite, weight_only_int8_recipe
    from edgedistil.config import load_recipe
    from edgedistil.fidelity import measure_fidelity
    from edgedistil.model import load_hf_folder
    from edgedistil.runtimes.litert import LiteRtLM, quiet_stderr
    from edgedistil.runtimes.torch_step import TorchLM

    torch.set_num_threads(1)
    src = run / "litert" / "student" / "fp32" / "model.tflite"
    heldout = Run(out=run, recipe=load_recipe(None)).heldout_ids()
    student = load_hf_folder(run / "distill" / "student", max_len=256).eval()
    reference = TorchLM(student, 256)
    ops = qtyping.TFLOperationName.ALL_SUPPORTED
    not_head = "^(?!.*logits).*$"  # the LM head's output is the signature output `logits`
    hadamard = Path(quantizer.__file__).parent / "recipes" / "dynamic_wi8_afp32_hadamard_recipe.json"
    schemes = {
        "fp32 (no quantization)": None,
        "dynamic_int8 (channelwise)": lambda q: q.add_dynamic_config(".*", ops, 8),
        "dynamic_int8 + Hadamard rotation": lambda q: q.load_quantization_recipe(str(hadamard)),
        "dynamic_int8, LM head float": lambda q: q.add_dynamic_config(not_head, ops, 8),
        "dynamic_int8 + Hadamard rotation, vocabulary matrix fp16": lambda q: q.load_quantization_recipe(
            json.loads(hadamard.read_text()) + weight_only_int8_recipe()[1:2]),
        "weight_only_int8 (channelwise), all int8": lambda q: q.load_quantization_recipe(
            weight_only_int8_recipe()[:1]),
        "weight_only_int8, vocabulary matrix fp16": lambda q: q.load_quantization_recipe(
            weight_only_int8_recipe()[:2]),  # KEPT_FP16's first entry is the vocabulary matrix
        "weight_only_int8, vocabulary matrix and down_proj fp16": lambda q: q.load_quantization_recipe(
            weight_only_int8_recipe()[:3]),
        "weight_only_int8, vocabulary matrix, down_proj and v_proj fp16": lambda q: q.load_quantization_recipe(
            weight_only_int8_recipe()),
        # from the student itself, not the fp32 file: GPTQ (act order) rounds its weights in PyTorch first
        "weight_only_int8 GPTQ, vocabulary matrix, down_proj and v_proj fp16 (shipped)": lambda path: convert_tflite(
            student, "weight_only_int8", path, 64, 256, calib_ids=heldout),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, configure in schemes.items():
            path = Path(tmp) / "q.tflite"
            if configure is None:
                shutil.copy(src, path)
            elif "GPTQ" in name:
                configure(path)
            else:
                q = quantizer.Quantizer(str(src))
                configure(q)
                with quiet_stderr(), _bytes_tensor_names():
                    q.quantize().export_model(str(path), overwrite=True)
            timed = subprocess.run([sys.executable, "-m", "edgedistil.bench.decode_probe", "litert", str(path)],
                                   capture_output=True, text=True)
            if timed.returncode != 0:
                sys.exit(f"{name}: {timed.stderr[-2000:]}")
            decode, peak_mb = (float(x) for x in timed.stdout.split()[-2:])
            f = measure_fidelity(reference, LiteRtLM(path), heldout, 64, segments=16, greedy_tokens=64)
            row = {"scheme": name, "mb": round(path.stat().st_size / 1e6, 1), "top1_agreement": round(f["top1_agreement"], 4),
                   "kl_mean": f["kl_mean"], "greedy_tokens_matching": f["greedy_tokens_matching"],
                   "near_tie_share": round(f["near_tie_share"], 4),
                   "top1_agreement_outside_near_ties": round(f["top1_agreement_outside_near_ties"], 4),
                   "perplexity_change": round(f["perplexity_change"], 4),
                   "decode_tokens_per_s_1_thread": round(decode, 1), "peak_rss_mb": round(peak_mb)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    dest.write_text(json.dumps({"command": "python scripts/bench_android.py --run RUN --int8-schemes",
                                "machine": {"cpus": os.cpu_count(), "loadavg_1m_after": os.getloadavg()[0]},
                                "floors": {"top1_agreement_min": 0.98, "kl_mean_max": 0.02}, "rows": rows},
                               indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
