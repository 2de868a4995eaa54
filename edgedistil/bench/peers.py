"""The runtimes users would otherwise use, timed the way scripts/bench_runtime.py times ours.

Standalone on purpose (standard library + numpy + the peer's own package): onnxruntime-genai and Optimum pin other
transformers versions, so this file runs under their own venvs' Python, by path:

    PYTHON edgedistil/bench/peers.py {torch|genai-fp32|genai-int4|optimum} HF_DIR WORK_DIR PROMPT_TOKENS NEW REPEATS
    PYTHON edgedistil/bench/peers.py genai-ours ONNX_FOLDER WORK_DIR PROMPT_TOKENS NEW REPEATS onnx/model_q4.onnx

and prints one JSON line. Greedy decoding, batch 1, one thread. Decode tok/s is (N2 - N1) / (t(N2) - t(N1)) over
two generate calls, so prompt processing and setup cancel out; TTFT is a generate of one new token.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if f.endswith((".onnx", ".onnx.data", ".data", ".safetensors")))


def greedy_generate(model):
    """`generate(prompt_ids, n) -> n new ids` through a transformers-style model's own greedy `generate`."""
    import torch

    @torch.no_grad()
    def generate(p, n):
        ids = torch.tensor([p])
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(p):].tolist()

    return generate


def measure(generate, prompt: list[int], new: int, repeats: int) -> dict:
    """`generate(prompt, n)` runs greedy generation of n new tokens."""
    n1, n2 = 1, 1 + new
    generate(prompt, n2)  # warm-up
    ttft, wall, cpu = [], [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        generate(prompt, n1)
        w1, c1 = time.perf_counter(), time.process_time()
        generate(prompt, n2)
        w2, c2 = time.perf_counter(), time.process_time()
        ttft.append((w1 - w) * 1e3)
        wall.append((w2 - w1) - (w1 - w))
        cpu.append((c2 - c1) - (c1 - c))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"ttft_ms": med(ttft), "decode_tokens_per_s": new / med(wall),
            "decode_tokens_per_s_spread": [new / max(wall), new / min(wall)],
            "cpu_ms_per_token": 1e3 * med(cpu) / new, "repeats": repeats}


def run_torch(hf_dir, work, prompt, new, repeats):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    load = time.perf_counter() - t0

    generate = greedy_generate(model)
    out = measure(generate, prompt, new, repeats)
    out.update({"runtime": f"PyTorch {torch.__version__} eager, transformers generate (greedy)", "load_seconds": load,
                "bytes": folder_bytes(hf_dir), "tokens": generate(prompt, 16)})
    return out


def builder_export(hf_dir, work, precision) -> tuple[str, float | None]:
    """genai's model builder's export of the HF folder (`-p precision -e cpu`), made once into WORK: its folder and
    the seconds the build took (None when it was there already)."""
    # keyed by the folder's names, sizes and mtimes (records.folder_fingerprint's rule; this file stays standalone),
    # so a rebuilt student is exported again rather than served a stale export
    stamp = hashlib.sha256(repr(sorted((f, os.path.getsize(os.path.join(hf_dir, f)), os.path.getmtime(
        os.path.join(hf_dir, f))) for f in os.listdir(hf_dir))).encode()).hexdigest()[:12]
    model_dir = os.path.join(work, f"genai-{precision}-{stamp}")
    if os.path.isfile(os.path.join(model_dir, "genai_config.json")):
        return model_dir, None
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", model_dir,
                    "-p", precision, "-e", "cpu", "-c", os.path.join(work, "genai-cache")], check=True,
                   capture_output=True)
    return model_dir, time.perf_counter() - t0


def run_genai(hf_dir, work, prompt, new, repeats, precision):
    """genai on its own model builder's export of the HF folder."""
    model_dir, build_s = builder_export(hf_dir, work, precision)
    return {**genai_measure(model_dir, prompt, new, repeats, f"{precision} (model builder)"), "build_seconds": build_s}


def run_genai_ours(folder, work, prompt, new, repeats, decoder_file):
    """genai on our Hugging Face ONNX folder as shipped, with genai_config.json naming `decoder_file` (what a
    developer edits to run model_q4.onnx): the folder's files are linked into WORK, not copied."""
    import shutil

    name = os.path.splitext(os.path.basename(decoder_file))[0]
    model_dir = os.path.join(work, f"genai-ours-{name}")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)
    for entry in os.listdir(folder):
        if entry != "genai_config.json":
            os.symlink(os.path.abspath(os.path.join(folder, entry)), os.path.join(model_dir, entry))
    with open(os.path.join(folder, "genai_config.json")) as f:
        config = json.load(f)
    config["model"]["decoder"]["filename"] = decoder_file
    with open(os.path.join(model_dir, "genai_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return genai_measure(model_dir, prompt, new, repeats, f"on our folder, {decoder_file}")


def genai_measure(model_dir, prompt, new, repeats, label):
    import onnxruntime_genai as og

    config = og.Config(model_dir)
    config.clear_providers()
    t0 = time.perf_counter()
    model = og.Model(config)
    load = time.perf_counter() - t0

    def generate(p, n):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(p) + n, min_length=len(p) + n, batch_size=1)
        gen = og.Generator(model, params)
        gen.append_tokens([p])
        out = []
        while not gen.is_done() and len(out) < n:
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return out

    out = measure(generate, prompt, new, repeats)
    with open(os.path.join(model_dir, "genai_config.json")) as f:
        decoder = os.path.join(model_dir, json.load(f)["model"]["decoder"]["filename"])
    out.update({"runtime": f"onnxruntime-genai {og.__version__} {label}", "load_seconds": load,
                "bytes": sum(os.path.getsize(p) for p in (decoder, decoder + ".data") if os.path.isfile(p)),
                "tokens": generate(prompt, 16)})
    return out


def run_optimum(hf_dir, work, prompt, new, repeats):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    model_dir = os.path.join(work, "optimum")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not os.path.isdir(model_dir):
        ORTModelForCausalLM.from_pretrained(hf_dir, export=True).save_pretrained(model_dir)
    t0 = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(model_dir, session_options=so, use_cache=True)
    load = time.perf_counter() - t0

    generate = greedy_generate(model)
    out = measure(generate, prompt, new, repeats)
    out.update({"runtime": f"Optimum ORTModelForCausalLM (onnxruntime {ort.__version__}), fp32", "load_seconds": load,
                "bytes": folder_bytes(model_dir), "tokens": generate(prompt, 16)})
    return out


def main(argv):
    mode, hf_dir, work, prompt_tokens, new, repeats = argv[0], argv[1], argv[2], *map(int, argv[3:6])
    os.makedirs(work, exist_ok=True)
    prompt = [(7 * i + 3) % 97 + 100 for i in range(prompt_tokens)]
    if mode == "torch":
        out = run_torch(hf_dir, work, prompt, new, repeats)
    elif mode == "genai-ours":
        out = run_genai_ours(hf_dir, work, prompt, new, repeats, argv[6])
    elif mode.startswith("genai-"):
        out = run_genai(hf_dir, work, prompt, new, repeats, mode.split("-", 1)[1])
    elif mode == "optimum":
        out = run_optimum(hf_dir, work, prompt, new, repeats)
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["peak_memory_mb"] = status_mb("VmHWM")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
