"""The Hugging Face ONNX folder checked by the runtimes developers use, each loading the folder as it is:

- onnxruntime-genai (`og.Model(folder)`): greedy ids equal PyTorch's (Python onnxruntime's on the same file when
  genai_config.json names a quantized one), and a batch of two prompts of different
  lengths (padded by genai's own tokenizer) gives each prompt's ids;
- Transformers.js (npm `@huggingface/transformers`, pinned by tjs_runtime/package-lock.json) in headless Chromium,
  offline: the page loads Transformers.js and onnxruntime-web's wasm from this machine and the folder from a local
  model path. In fp32 its greedy ids must equal PyTorch's; a quantized file's must equal Python onnxruntime's on
  the same file; `pipeline('text-generation')` runs on text, and a chat prompt goes through the template;
- Optimum `ORTModelForCausalLM` (optimum-onnx pins transformers 4.57: it runs in a venv of its own,
  edgedistil.runtimes.venv, through optimum_worker.py): every onnx/ file loaded from the folder, its generate()'s
  greedy ids equal PyTorch's in fp32, Python onnxruntime's on the same file else.

A runtime that cannot run here is reported as unavailable with the reason, never replaced by anything else.
Greedy ids are compared up to and including the first end-of-sequence token, since every consumer stops there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgedistil.convert.hf_onnx import DTYPE_FILES
from edgedistil.errors import EdgeError, read_json

TJS_SRC = Path(__file__).resolve().parent / "tjs_runtime"
TJS_MODULE = "@huggingface/transformers/dist/transformers.min.js"
# the wasm build Transformers.js picks without WebGPU (asyncify), served where env.backends.onnx.wasm.wasmPaths points
ORT_WASM = ("ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
TJS_VENDOR = {"vendor/transformers.min.js": TJS_MODULE,
              **{f"vendor/ort/{name}": f"onnxruntime-web/dist/{name}" for name in ORT_WASM}}
CHAT_MESSAGE = [{"role": "user", "content": "What is the capital of France?"}]


def transformersjs_runtime(log=print) -> Path:
    from edgedistil.convert.web import npm_ci

    return npm_ci(TJS_SRC, TJS_VENDOR.values(), "@huggingface/transformers", log)


def until_eos(ids: list[int], eos: set[int]) -> list[int]:
    """`ids` up to and including the first end-of-sequence token: where a consumer stops."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def eos_ids(folder: Path) -> set[int]:
    eos = read_json(Path(folder) / "generation_config.json", "generation config").get("eos_token_id")
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def torch_greedy(student_dir: Path, prompt: list[int], new_tokens: int, max_len: int) -> list[int]:
    """The fp32 PyTorch student's greedy ids: the reference every consumer is held to."""
    from edgedistil.decoding import greedy
    from edgedistil.model import load_hf_folder
    from edgedistil.runtimes.torch_step import TorchLM

    lm = TorchLM(load_hf_folder(student_dir, max_len=max_len), max_len)
    return greedy(lm.step, lm.empty_cache(), prompt, new_tokens, len(prompt), max_len)


def ort_greedy(model: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """Python onnxruntime's greedy ids on one hf file (one max_len buffer per layer, in place)."""
    from edgedistil.decoding import greedy
    from edgedistil.runtimes.ort import OrtLM

    lm = OrtLM(model)
    return greedy(lm.step, lm.empty_cache(), prompt, new_tokens, len(prompt), lm.max_len)


def compare(got: list[int], ref: list[int], eos: set[int]) -> dict:
    """Each side up to its first end-of-sequence token, compared without it: onnxruntime-genai stops on it but
    leaves it out of the sequence, so [a, b] from a consumer that stopped early equals [a, b, eos]."""
    got, ref = until_eos(got, eos), until_eos(ref, eos)
    text_got, text_ref = [t for t in got if t not in eos], [t for t in ref if t not in eos]
    first = next((i for i, (a, b) in enumerate(zip(text_got, text_ref)) if a != b), None)
    if first is None and len(text_got) != len(text_ref):
        first = min(len(text_got), len(text_ref))
    return {"ids": got, "reference_ids": ref, "ids_equal": text_got == text_ref, "first_divergence": first}


# ---- onnxruntime-genai ------------------------------------------------------------------------------------------


def check_genai(folder: Path, student_dir: Path, texts: list[str], new_tokens: int) -> dict:
    """og.Model(folder) as a developer calls it: genai's tokenizer, greedy search from genai_config.json; one
    prompt alone, then `texts` (two prompts of different lengths) as one batch."""
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        return {"available": False, "reason": f"onnxruntime-genai is not installed ({e})"}
    folder = Path(folder)
    max_len = read_json(folder / "genai_config.json", "genai config")["model"]["context_length"]
    eos = eos_ids(folder)
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    prompts = [[int(t) for t in tokenizer.encode(text)] for text in texts]
    decoder = read_json(folder / "genai_config.json")["model"]["decoder"]["filename"]
    if decoder == "onnx/" + DTYPE_FILES["fp32"]:
        reference = "fp32 PyTorch student, greedy"
        refs = [torch_greedy(student_dir, p, new_tokens, max_len) for p in prompts]
    else:  # a quantized file is held to Python onnxruntime on the same file; its fidelity to PyTorch is measured
        reference = f"Python onnxruntime on {decoder}, greedy"
        refs = [ort_greedy(folder / decoder, p, new_tokens) for p in prompts]

    def generate(batch) -> list[list[int]]:
        padded = batch.shape[1]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=padded + new_tokens, batch_size=batch.shape[0])
        generator = og.Generator(model, params)
        generator.append_tokens(batch)
        while not generator.is_done():
            generator.generate_next_token()
        return [[int(t) for t in generator.get_sequence(i)][padded:] for i in range(batch.shape[0])]

    import numpy as np

    single = generate(np.asarray([prompts[0]], np.int32))[0]
    batch = tokenizer.encode_batch(texts).as_numpy()  # genai pads the shorter prompt itself
    rows = generate(batch)
    out = {"available": True, "runtime": f"onnxruntime-genai {og.__version__} (CPU)",
           "decoder": decoder,
           "prompt_tokens": [len(p) for p in prompts], "new_tokens": new_tokens,
           "single": compare(single, refs[0], eos),
           "batch": [compare(r, ref, eos) for r, ref in zip(rows, refs)],
           "batch_padded_length": int(batch.shape[1]), "reference": reference}
    out["ids_equal"] = out["single"]["ids_equal"] and all(b["ids_equal"] for b in out["batch"])
    return out


# ---- Optimum ------------------------------------------------------------------------------------------------

OPTIMUM_PINS = ["optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6", "onnxruntime==1.32.0"]
OPTIMUM_VENV = "optimum-venv"
OPTIMUM_WORKER = Path(__file__).resolve().parent / "optimum_worker.py"


def optimum_python(log=print) -> Path:
    from edgedistil.runtimes.venv import pinned_venv

    return pinned_venv(OPTIMUM_VENV, OPTIMUM_PINS, log) / "bin" / "python"


def check_optimum(folder: Path, student_dir: Path, prompt: list[int], new_tokens: int, log=print) -> dict:
    """`ORTModelForCausalLM.from_pretrained(folder, subfolder="onnx", file_name=...)` on every onnx/ file, greedy."""
    import json
    import subprocess

    folder = Path(folder)
    try:
        python = optimum_python(log)
    except (subprocess.CalledProcessError, OSError) as e:
        return {"available": False, "reason": f"the Optimum venv could not be made ({e})"}
    dtypes = {name: d for d, name in DTYPE_FILES.items() if (folder / "onnx" / name).is_file()}
    with tempfile.TemporaryDirectory(prefix="edgedistil-optimum-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"files": list(dtypes), "prompt": prompt, "new_tokens": new_tokens}))
        proc = subprocess.run([str(python), str(OPTIMUM_WORKER), str(folder), str(job)], capture_output=True,
                              text=True, timeout=1800)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        return {"available": True, "ran": False, "reason": lines[-1][:300]}
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    eos = eos_ids(folder)
    max_len = read_json(folder / "genai_config.json", "genai config")["model"]["context_length"]
    files = {}
    for name, r in raw["files"].items():
        if "error" in r:
            files[dtypes[name]] = {"file": f"onnx/{name}", "ran": False, "reason": r["error"], "ids_equal": False}
            continue
        fp32 = dtypes[name] == "fp32"
        ref = torch_greedy(student_dir, prompt, new_tokens, max_len) if fp32 else \
            ort_greedy(folder / "onnx" / name, prompt, new_tokens)
        files[dtypes[name]] = {"file": f"onnx/{name}", "ran": True, **compare(r["ids"], ref, eos),
                               "reference": "fp32 PyTorch student" if fp32 else "Python onnxruntime, same file"}
    v = raw["versions"]
    return {"available": True, "ran": True, "new_tokens": new_tokens, "files": files,
            "runtime": f"Optimum ORTModelForCausalLM (optimum-onnx {v['optimum-onnx']}, transformers "
                       f"{v['transformers']}, onnxruntime {v['onnxruntime']} CPU)",
            "ids_equal": all(f["ids_equal"] for f in files.values())}


# ---- Transformers.js in Chromium --------------------------------------------------------------------------------

CHAT_NEW_TOKENS = 8
TJS_JS = """
async ({ dtypes, prompt, text, chat, newTokens, chatNewTokens }) => {
  const { env, pipeline, Tensor } = await import("/vendor/transformers.min.js");
  env.allowLocalModels = true;         // false by default in browsers
  env.allowRemoteModels = false;       // offline: nothing from the Hub
  env.localModelPath = "/models/";
  env.useBrowserCache = false;
  env.backends.onnx.wasm.wasmPaths = "/vendor/ort/";   // onnxruntime-web served here, not from a CDN
  env.backends.onnx.wasm.numThreads = 1;
  const out = { version: env.version, files: {} };
  for (const dtype of dtypes) {
    try {
    const t0 = performance.now();
    const generator = await pipeline("text-generation", "student", { dtype, device: "wasm" });
    const loadMs = performance.now() - t0;
    const input_ids = new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]);
    const seq = await generator.model.generate({ input_ids, max_new_tokens: newTokens, do_sample: false });
    const r = { loadMs, ids: seq.tolist()[0].slice(prompt.length).map(Number) };
    const fromText = await generator(text, { max_new_tokens: 8, do_sample: false, return_full_text: false });
    r.textOutput = fromText[0].generated_text;
    if (chat) {
      // return_dict: false, or 4.x returns {input_ids, attention_mask}
      r.chatIds = generator.tokenizer.apply_chat_template(chat, { add_generation_prompt: true, tokenize: true,
                                                                  return_tensor: false, return_dict: false })
        .map(Number);
      const chatTensor = new Tensor("int64", BigInt64Array.from(r.chatIds.map(BigInt)), [1, r.chatIds.length]);
      const chatSeq = await generator.model.generate({ input_ids: chatTensor, max_new_tokens: chatNewTokens,
                                                        do_sample: false });
      r.chatGenIds = chatSeq.tolist()[0].slice(r.chatIds.length).map(Number);
      const answer = await generator(chat, { max_new_tokens: chatNewTokens, do_sample: false });
      r.chatReply = answer[0].generated_text.at(-1);
    }
    out.files[dtype] = r;
    await generator.dispose();
    } catch (e) { out.files[dtype] = { error: String(e).slice(0, 300) }; }
  }
  return out;
}
"""


def check_transformersjs(folder: Path, student_dir: Path, prompt: list[int], text: str, new_tokens: int,
                         log=print) -> dict:
    """Every onnx/ file of `folder` through Transformers.js' own pipeline in headless Chromium, offline."""
    from edgedistil.bench.web import CHROMIUM_ARGS, PAGE_TIMEOUT_MS, _import_playwright, chromium_path, serve
    from transformers import AutoTokenizer

    folder = Path(folder)
    try:
        chromium, sync_playwright = chromium_path(), _import_playwright()
        node_modules = transformersjs_runtime(log)
    except EdgeError as e:
        return {"available": False, "reason": e.line()}
    dtypes = [d for d, name in DTYPE_FILES.items() if (folder / "onnx" / name).is_file()]
    tokenizer = AutoTokenizer.from_pretrained(folder)  # a local folder; trust_remote_code stays off
    chat = CHAT_MESSAGE if getattr(tokenizer, "chat_template", None) else None
    extra = {rel: node_modules / src for rel, src in TJS_VENDOR.items()}
    extra.update({f"models/student/{p.relative_to(folder)}": p for p in folder.rglob("*") if p.is_file()})
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgedistil-tjs-") as root, serve(Path(root), extra=extra) as base, \
            sync_playwright() as pw:
        (Path(root) / "index.html").write_text("<!doctype html><title>Transformers.js check</title><body></body>")
        profile = Path(root) / ".chromium-profile"  # a dot folder: the server refuses nothing but serves no listing
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=str(chromium), headless=True,
                                                    args=CHROMIUM_ARGS, timeout=120_000)
        raw = {"files": {}}
        try:
            for dtype in dtypes:  # a fresh page per file: a failed session leaves onnxruntime-web's state behind
                page = ctx.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                page.on("pageerror", lambda e: errors.append(str(e)[:300]))
                page.goto(base + "index.html")
                got = page.evaluate(TJS_JS, {"dtypes": [dtype], "prompt": prompt, "text": text, "chat": chat,
                                             "newTokens": new_tokens, "chatNewTokens": CHAT_NEW_TOKENS})
                raw["version"], raw["files"][dtype] = got["version"], got["files"][dtype]
                page.close()
        except Exception as e:  # Playwright's errors carry the page's exception text
            return {"available": True, "ran": False, "reason": str(e).splitlines()[0][:300],
                    "page_errors": errors[:5]}
        finally:
            ctx.close()
    return tjs_record(raw, folder, student_dir, tokenizer, prompt, text, chat, new_tokens)


def tjs_record(raw: dict, folder: Path, student_dir: Path, tokenizer, prompt: list[int], text: str, chat,
               new_tokens: int) -> dict:
    """The page's results against the references: PyTorch for fp32, Python onnxruntime on the same file else."""
    from edgedistil.bench.web import divergence_gap

    eos = eos_ids(folder)
    max_len = read_json(folder / "genai_config.json", "genai config")["model"]["context_length"]
    torch_ids = torch_greedy(student_dir, prompt, new_tokens, max_len)
    text_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    chat_ids = (tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
                if chat else None)
    files = {}
    for dtype, r in raw["files"].items():
        path = folder / "onnx" / DTYPE_FILES[dtype]
        if "error" in r:
            files[dtype] = {"file": f"onnx/{path.name}", "ran": False, "reason": r["error"], "ids_equal": False}
            continue
        reference = torch_ids if dtype == "fp32" else ort_greedy(path, prompt, new_tokens)
        python_text = tokenizer.decode(until_eos(ort_greedy(path, text_ids, 8), eos), skip_special_tokens=True)
        entry = {"file": f"onnx/{path.name}", "ran": True, "load_ms": round(r["loadMs"], 1),
                 **compare(r["ids"], reference, eos),
                 "reference": "fp32 PyTorch student" if dtype == "fp32" else "Python onnxruntime, same file",
                 "pipeline_text": r["textOutput"], "pipeline_text_equal_python": r["textOutput"] == python_text}
        if not entry["ids_equal"] and dtype != "fp32":  # how close Python's own logits were where the two parted
            entry["divergence"] = divergence_gap(path, prompt, entry["reference_ids"], entry["ids"], len(prompt))
        if chat:  # the template rendered by Transformers.js, and what the model generates from it
            entry["chat_ids_equal_python_template"] = list(r["chatIds"]) == list(chat_ids)
            chat_ref = (torch_greedy(student_dir, list(chat_ids), CHAT_NEW_TOKENS, max_len) if dtype == "fp32"
                        else ort_greedy(path, list(chat_ids), CHAT_NEW_TOKENS))
            entry["chat"] = compare(r["chatGenIds"], chat_ref, eos)
            entry["chat_reply"] = r["chatReply"]
            entry["chat_reply_equal_python"] = r["chatReply"].get("content") == tokenizer.decode(
                until_eos(chat_ref, eos), skip_special_tokens=True)
        files[dtype] = entry
    return {"available": True, "ran": True, "runtime": f"Transformers.js {raw['version']} (onnxruntime-web wasm, "
            f"1 thread) in headless Chromium", "new_tokens": new_tokens, "files": files,
            "chat_template": bool(chat),
            "ids_equal": all(f["ids_equal"] for f in files.values())}
