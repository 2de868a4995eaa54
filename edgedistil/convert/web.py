"""The convert stage for `web`: records + the Hugging Face ONNX layout -> dist/web/, a folder a web developer serves
as it is.

The bundle is the layout (config, tokenizer, onnx/model_quantized.onnx: the file Transformers.js' q8 loads, written
by the target's `hf_section`) plus `edgedistil-web.js` (load, tokenize, chunked prefill, greedy decode streaming
tokens to a callback), which runs that same file, a demo page using our module, and under `vendor/` the few files of the
pinned npm packages that the page loads (onnxruntime-web's wasm build and the Hugging Face tokenizer library), so
nothing comes from a CDN. `manifest.json` lists every file with its sha256 and says what was measured.

The npm packages are pinned by `web_runtime/package-lock.json` and installed once with `npm ci --ignore-scripts`
into the cache (`$EDGEDISTIL_NPM_CACHE`, else `<edgedistil cache>/npm`), one folder per lockfile hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from edgedistil import __version__
from edgedistil.convert.manifest import evaluation_entry, quality_entry, student_entry
from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.records import file_entry, sha256_file

SCHEMA_VERSION = 1
RUNTIME_SRC = Path(__file__).resolve().parent / "web_runtime"
OWN_FILES = ("edgedistil-web.js", "index.html")  # ours, copied from web_runtime/
# bundle path -> path under node_modules: only what the page loads (the bundled ESM build of onnxruntime-web
# inlines its wasm glue, so one .mjs and one .wasm suffice), plus the tokenizer library's license
VENDOR_FILES = {
    "vendor/ort.wasm.bundle.min.mjs": "onnxruntime-web/dist/ort.wasm.bundle.min.mjs",
    "vendor/ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
    "vendor/tokenizers.min.mjs": "@huggingface/tokenizers/dist/tokenizers.min.mjs",
    "vendor/tokenizers.LICENSE": "@huggingface/tokenizers/LICENSE",
}
NPM_FIX = ("install Node.js and npm (Debian: `apt-get install nodejs npm`) and allow access to the npm registry once, "
           "or copy an installed runtime folder into $EDGEDISTIL_NPM_CACHE")


# ---- the pinned JS runtime -------------------------------------------------------------------------------------


def lock_hash(src: Path = RUNTIME_SRC) -> str:
    return hashlib.sha256((src / "package-lock.json").read_bytes()).hexdigest()[:16]


def npm_cache_root() -> Path:
    from edgedistil.sources import cache_dir

    env = os.environ.get("EDGEDISTIL_NPM_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "npm"


def web_runtime(log=print) -> Path:
    """The `node_modules` folder of the pinned runtime, installed with `npm ci` on first use."""
    return npm_ci(RUNTIME_SRC, VENDOR_FILES.values(), "onnxruntime-web, @huggingface/tokenizers", log)


def npm_ci(src: Path, required, what: str, log=print) -> Path:
    """The `node_modules` of the lockfile in `src`, installed once with `npm ci` into `<npm cache>/<lock hash>/`;
    `required` are paths under node_modules that must be there."""
    dest = npm_cache_root() / lock_hash(src)
    if (dest / "node_modules").is_dir() and all((dest / "node_modules" / p).is_file() for p in required):
        return dest / "node_modules"
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise EdgeError(f"edgedistil needs the pinned npm packages {what}, but `npm`/`node` are not on PATH",
                        NPM_FIX)
    log(f"installing the pinned JS packages ({what}) with npm ci into {dest}")
    with atomic_dir(dest) as tmp:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(src / name, tmp / name)
        # --ignore-scripts: nothing from the registry runs here; we only copy files out of the packages
        cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--fetch-retries=1",
               "--fetch-timeout=60000"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=600)
        except subprocess.TimeoutExpired:
            raise EdgeError(f"`npm ci` for {what} did not finish in 10 minutes", NPM_FIX) from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "ERR" in ln] or lines or ["npm exited without a message"]
            raise EdgeError(f"could not install the pinned JS packages ({what}) from the npm registry (not "
                            f"reachable?): {' / '.join(errors[:3])[:300]}", NPM_FIX)
        missing = [p for p in required if not (tmp / "node_modules" / p).is_file()]
        if missing:
            raise EdgeError(f"the installed npm packages lack {missing[0]}", "delete the npm cache folder and retry")
    return dest / "node_modules"


def runtime_versions(node_modules: Path) -> dict:
    def version(pkg: str) -> str:
        return json.loads((node_modules / pkg / "package.json").read_text())["version"]

    return {pkg: version(pkg) for pkg in ("onnxruntime-web", "@huggingface/tokenizers")}


# ---- the bundle ------------------------------------------------------------------------------------------------

USAGE = """\
# {name}: web bundle

Serve this folder as it is and open `index.html`: a demo page with a prompt box that streams the generated text
and shows tokens/s. The page uses our module, `edgedistil-web.js`; Transformers.js loads the same folder unchanged
(`pipeline("text-generation", ..., {{ dtype: "q8" }})`, see the edgedistil README). Everything it loads is in the folder (onnxruntime-web {ort_version} and
@huggingface/tokenizers {tok_version} are under `vendor/`); no CDN is contacted.

| file | what |
|---|---|
| `{model}` | {size_mb:.1f} MB, one graph for prefill and decode; {quantization}. The file Transformers.js' `dtype: "q8"` loads: the demo page runs it through our module, Transformers.js runs it as it is |
| `config.json`, `generation_config.json`, `genai_config.json` | the Hugging Face ONNX layout (Transformers.js, onnxruntime-genai, Optimum) |
| `tokenizer.json`, `tokenizer_config.json` | the tokenizer (chat template inline), read by @huggingface/tokenizers |
| `edgedistil-web.js` | ES module: load, tokenize, chunked prefill, greedy decode streaming tokens |
| `index.html` | the demo page |
| `vendor/` | `ort.wasm.bundle.min.mjs` + `ort-wasm-simd-threaded.wasm` (onnxruntime-web, MIT), `tokenizers.min.mjs` |
| `manifest.json` | I/O, cache layout, the sha256 of every file, measured fidelity and speed |

## Serve it

Any static server works. For more than one wasm thread the page must be cross-origin isolated (that is what
enables `SharedArrayBuffer`), so send these two headers with every file:

```
Cross-Origin-Opener-Policy: same-origin
Cross-Origin-Embedder-Policy: require-corp
```

Serve `.wasm` as `application/wasm` and `.js`/`.mjs` as `text/javascript`. For a quick local look (one thread,
no headers needed): `python3 -m http.server -d . 8000` and open http://127.0.0.1:8000/index.html.
With nginx: `add_header Cross-Origin-Opener-Policy same-origin; add_header Cross-Origin-Embedder-Policy
require-corp;`. edgedistil's own browser bench serves the folder with both headers (`edgedistil bench --target web
--bundle DIR`).

## Use the module

```js
import {{ load }} from "./edgedistil-web.js";

const lm = await load({{ threads: 1 }});  // threads > 1 needs the headers above
const result = await lm.generate("In the beginning", {{
  maxNewTokens: 48,
  onToken: ({{ text, tokensPerSecond }}) => output.append(text),  // streamed as it is generated
}});
console.log(result.ids, result.text, result.timings);  // timings: ttft_ms, prefill/decode tokens per second
```

`generate` accepts text or an array of token ids; it stops at the end-of-sequence token unless
`stopAtEos: false`. It decodes greedily; `repetitionPenalty: 1.2` divides the logits of the tokens the answer
already holds by 1.2 (CTRL's penalty on the answer's own tokens), which ended every looping answer of the default
student and its teacher on 54 chat prompts (docs/quality.md in the edgedistil repository, "Decoding").
Transformers.js and onnxruntime-genai apply their `repetition_penalty` over the prompt too, where the chat
template's end-of-turn token sits: there the same 1.2 stops answers from ending. What ended the loops through
transformers' `generate` (Transformers.js takes the same option) is `no_repeat_ngram_size: 3` (no 3-token phrase
twice): 1 of 54 answers looped against 26 greedily, as many ended their turn, but an answer cannot repeat a
3-token phrase of the question either. `lm.encode(text)` and
`lm.decode(ids)` use the bundle's tokenizer. The module keeps the files it imports at the relative paths of
this folder; to move them, keep `edgedistil-web.js` beside `vendor/`, and pass
`load({{ base: "https://.../bundle/" }})` when the model and manifest live elsewhere. `load({{ sessionOptions }})`
passes onnxruntime-web session options on: `{{ graphOptimizationLevel: "disabled" }}` keeps the int8 weights int8
in memory, for about half the renderer's peak at about a seventh of the decode speed (docs/benchmarks.md in the
edgedistil repository, "Web: where the renderer's memory goes").

## The model's calling convention

The Hugging Face ONNX convention: one graph serves prefill and decode. `input_ids` int64 `[1, T]`,
`attention_mask` int64 ones `[1, past + T]` (its length says where the new tokens go), and per layer
`past_key_values.{{i}}.key|value` float32 `{cache_shape}` (past length 0 at the start); it returns `logits`
`[1, T, {vocab}]` and `present.{{i}}.key|value` (past + T rows), fed back as the next step's past. Our module runs
prompts in chunks of {prefill} tokens, pads the last chunk with token 0, reads the logits of its last real token
and drops the padded rows from the cache, as edgedistil's Python loop does.

## What was measured

{measured}
"""


def _measured_text(manifest: dict) -> str:
    b, fid = manifest["bench"], manifest["fidelity"]
    lines = []
    if b.get("decode_tokens_per_s") is not None:
        lines.append(f"- Speed ({b['runtime']}): decode {b['decode_tokens_per_s']:.1f} tokens/s, prefill "
                     f"{b['prefill_tokens_per_s']:.0f} tokens/s, first token after {b['ttft_ms']:.0f} ms, peak "
                     f"memory {b['peak_memory_mb']:.0f} MB.")
    native = manifest.get("bench_native") or {}
    if native.get("decode_tokens_per_s") is not None and native is not b:
        lines.append(f"- Native ({native['runtime']}), same file: decode {native['decode_tokens_per_s']:.1f} "
                     f"tokens/s.")
    browser = fid.get("browser")
    if browser:
        gap = browser.get("divergence")
        lines.append(f"- In the browser, greedy generation gave {browser['tokens_matching']}/{browser['tokens']} "
                     f"of the token ids of Python onnxruntime on the same prompt" +
                     (f"; at token {gap['position']} the two tokens were {gap['logit_gap']:.3g} apart in Python's "
                      f"logits ({'a near-tie' if abs(gap['logit_gap']) < 0.5 else 'not a near-tie'})." if gap
                      else "."))
    else:
        lines.append("- This bundle has not been run in a browser yet (`edgedistil bench --target web --bundle DIR`).")
    lines.append(f"- Against the fp32 PyTorch student on held-out text: top-1 agreement {fid['top1_agreement']:.3f}, "
                 f"mean KL {fid['kl_mean']:.4f}.")
    return "\n".join(lines)


def assemble_web_bundle(dest: Path, model: str, records: dict, node_modules: Path, hf_section) -> dict:
    """Write the bundle into the existing, empty folder `dest` and return its manifest.

    `hf_section(dest)` writes the Hugging Face ONNX layout (targets/_hf_layout.py) and returns the manifest's
    `hf_onnx`; `model` is the layout's file our module runs (onnx/model_quantized.onnx). `records` holds the hf
    export, its quantize and the distill records, and optionally `bench` (native ONNX Runtime) and `bench_web` (the
    browser, see edgedistil.bench.web).
    """
    dest = Path(dest)
    export, quant, distill = records["export"], records["quantize"], records["distill"]
    hf = hf_section(dest)
    for name in OWN_FILES:
        shutil.copy2(RUNTIME_SRC / name, dest / name)
    (dest / "vendor").mkdir()
    for rel, src in VENDOR_FILES.items():
        shutil.copy2(node_modules / src, dest / rel)
    versions = runtime_versions(node_modules)
    graphs = [{**g, "file": model} for g in export["graphs"]]
    name = f"{records.get('recipe_name', 'student')}-student"
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "target": "web",
        "name": name,
        "created_by": f"edgedistil {__version__}",
        "runtime": {"name": "onnxruntime-web", "version": versions["onnxruntime-web"], "execution_provider": "wasm",
                    "opset": export["opset"], "module": "edgedistil-web.js", "demo": "index.html",
                    "demo_uses": "edgedistil-web.js (our module) on " + model + "; Transformers.js loads the same file",
                    "tokenizer_library": f"@huggingface/tokenizers {versions['@huggingface/tokenizers']}",
                    "vendor": {rel: src for rel, src in VENDOR_FILES.items()},
                    "npm_lock_sha256_16": lock_hash()},
        "files": [],
        "graphs": graphs,
        "kv_cache": export["kv_cache"],
        "tokenizer": "tokenizer.json",
        "quantization": {"method": quant["method"], "scheme": quant["scheme"],
                         # layers left float that the method meant to quantize (check can gate it at 0)
                         "unintended_float_layers": (quant.get("precision") or {}).get("unintended_float_layers"),
                         "layer_counts": (quant.get("precision") or {}).get("counts")},
        "fidelity": _fidelity(quant, records.get("bench_web")),
        **_bench_entries(records.get("bench"), records.get("bench_web")),
        "transformersjs_bench": _transformersjs_entry(records.get("bench_web")),
        "quality": quality_entry(distill),
        "evaluation": evaluation_entry(records.get("eval")),
        "student": student_entry(distill),
    }
    (dest / "USAGE.md").write_text(USAGE.format(
        name=name, model=model, size_mb=quant["bytes"] / 1e6, quantization=f"`{quant['method']}` ({quant['scheme']})",
        prefill=graphs[0]["tokens_per_call"],
        cache_shape=export["kv_cache"]["shape"], vocab=graphs[0]["outputs"][0]["shape"][-1],
        ort_version=versions["onnxruntime-web"], tok_version=versions["@huggingface/tokenizers"],
        measured=_measured_text(manifest)))
    manifest["hf_onnx"] = hf
    manifest["files"] = [file_entry(p, dest) for p in sorted(dest.rglob("*")) if p.is_file()]
    write_json(dest / "manifest.json", manifest)
    return manifest


def run_convert_web(quantized_onnx: Path, model: str, out_dir: Path, records: dict, hf_section, log=print) -> dict:
    """Assemble `out_dir` (dist/web) atomically; `quantized_onnx` is the run folder's copy of `model`; see
    assemble_web_bundle for the rest."""
    node_modules = web_runtime(log)
    web = records.get("bench_web")
    if web and web["student"]["sha256"] != sha256_file(quantized_onnx):
        raise EdgeError("the browser bench record is for another model file than the one being bundled",
                        "rerun `edgedistil build --target web` so the browser bench runs on this model")
    with atomic_dir(out_dir) as tmp:
        manifest = assemble_web_bundle(tmp, model, records, node_modules, hf_section)
    files = manifest["files"]
    log(f"convert[web]: {out_dir} ({sum(f['bytes'] for f in files) / 1e6:.1f} MB in {len(files)} files)")
    return manifest


def _fidelity(quant: dict, web: dict | None) -> dict:
    f = quant["fidelity"]
    out = {**{k: f[k] for k in ("max_abs_diff", "top1_agreement", "kl_mean", "greedy_tokens_matching",
                                "greedy_tokens")},
           **{k: f.get(k) for k in ("perplexity", "perplexity_reference", "perplexity_change", "meets_floors",
                                    "near_tie_share", "top1_agreement_outside_near_ties", "top1_agreement_ci95")},
           "reference": "fp32 PyTorch student", "runtime": "onnxruntime CPU (host)",
           "positions_compared": f["positions_compared"]}
    if web:
        s = web["student"]
        out["browser"] = {"tokens_matching": s["tokens_matching"], "tokens": len(s["reference_ids"]),
                          "ids_equal": s["ids_equal"], "first_divergence": s["first_divergence"],
                          "divergence": s.get("divergence"),
                          "reference": "the same model file in Python onnxruntime (CPU), greedy, same prompt",
                          "runtime": s["runtime"]}
    return out


def _bench_entries(native: dict | None, web: dict | None) -> dict:
    """`bench`/`teacher_bench` come from the browser when it ran, else from native ONNX Runtime; the native figures
    are kept under `bench_native`/`teacher_bench_native` either way. `speedup_vs_teacher` compares the two on the
    same runtime only."""
    def missing(reason):
        return {"value": None, "reason": reason}

    nat = {role: native_entry(native[role]) if native and role in native else None for role in ("student", "teacher")}
    brw = {role: web[role] if web and web.get(role) and web[role].get("decode_tokens_per_s") is not None else None
           for role in ("student", "teacher")}
    out = {}
    for key, role in (("bench", "student"), ("teacher_bench", "teacher")):
        chosen = brw[role] and _web_entry(brw[role])
        if not chosen:
            chosen = nat[role]
        if chosen is None:
            reason = "the bench stage did not run"
            if web and web.get(role) and web[role].get("reason"):
                reason = web[role]["reason"]
            chosen = missing(reason)
        out[key] = chosen
        out[key + "_native"] = nat[role] or missing("the native bench stage did not run")
    pair, where = (brw, "browser") if brw["student"] and brw["teacher"] else (nat, "native")
    if pair["student"] and pair["teacher"]:
        out["speedup_vs_teacher"] = round(pair["student"]["decode_tokens_per_s"]
                                          / pair["teacher"]["decode_tokens_per_s"], 3)
        out["speedup_runtime"] = where
    else:
        out["speedup_vs_teacher"] = None
        out["speedup_runtime"] = None
    if brw["student"] and nat["student"]:
        out["browser_vs_native_decode"] = round(brw["student"]["decode_tokens_per_s"]
                                                / nat["student"]["decode_tokens_per_s"], 3)
    return out


def _transformersjs_entry(web: dict | None) -> dict:
    """Transformers.js on the bundle's q8 file, timed in the same Chromium and conditions as our page, and our decode
    speed over its (`decode_ours_over_transformersjs`)."""
    tjs = (web or {}).get("transformersjs")
    if not tjs or "files" not in tjs:
        return {"value": None, "reason": (tjs or {}).get("reason", "the browser bench stage did not run")}
    q8 = tjs["files"]["q8"]
    keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms")
    return {"runtime": tjs["runtime"], "file": q8["file"], "dtype": "q8", **{k: q8[k] for k in keys},
            "renderer_peak_rss_mb": q8["renderer_peak_rss_mb"], "load_ms": q8["load_ms"], "repeats": tjs["repeats"],
            "spread": {k: q8[k + "_spread"] for k in keys}, "ids_equal_to_ours": q8["ids_equal_to_ours"],
            "decode_ours_over_transformersjs": tjs["decode_ours_over_transformersjs"]}


def native_entry(r: dict) -> dict:
    """A native ONNX Runtime bench record (bench/ort.py) as the manifest's `bench`/`teacher_bench` entry."""
    keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "peak_memory_mb")
    return {"runtime": r["runtime"], **{k: r[k] for k in keys}, "repeats": r["repeats"], "model_bytes": r["bytes"],
            "spread": {k: r[k + "_spread"] for k in keys if k + "_spread" in r}, "sha256": r["sha256"]}


def _web_entry(r: dict) -> dict:
    keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "peak_memory_mb")
    extra = ("pages", "js_heap_used_mb", "renderer_peak_rss_mb", "chromium_peak_rss_mb", "load_ms", "threads",
             "cross_origin_isolated", "wasm_simd")
    return {"runtime": r["runtime"], **{k: r[k] for k in keys}, "repeats": r["repeats"], "model_bytes": r["bytes"],
            "spread": {k: r[k + "_spread"] for k in keys if k + "_spread" in r}, "sha256": r["sha256"],
            **{k: r.get(k) for k in extra},
            "peak_memory_source": "peak resident set of the Chromium renderer process that ran the page (VmHWM)"}


def check_onnx_io(path: Path, session, graphs: list[dict]) -> None:
    """The model's own input and output names, dtypes and fixed dims against what the manifest promises."""
    dtypes = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(float16)": "float16"}
    for g in graphs:
        for side, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            have = {a.name: a for a in actual}
            for want in g[side]:
                a = have.get(want["name"])
                if a is None:
                    raise EdgeError(f"{path.name} has no {side[:-1]} '{want['name']}' that the manifest's "
                                    f"{g['name']} graph lists", "rebuild the bundle; the manifest and model differ")
                fixed_ok = len(a.shape) == len(want["shape"]) and all(
                    not isinstance(d, int) or d == w for d, w in zip(a.shape, want["shape"]))
                if dtypes.get(a.type) != want["dtype"] or not fixed_ok:
                    raise EdgeError(f"{path.name} {side[:-1]} '{a.name}' is {dtypes.get(a.type, a.type)} "
                                    f"{list(a.shape)}, but the manifest says {want['dtype']} {want['shape']}",
                                    "rebuild the bundle; the manifest and model differ")


def verify_onnx(bundle: Path, manifest: dict) -> list[dict]:
    """Each ONNX file's I/O against the manifest's graphs, and one decode step in ONNX Runtime with finite logits."""
    from edgedistil.runtimes.ort import OrtLM

    runs = []
    for file in sorted({g["file"] for g in manifest["graphs"]}):
        lm = OrtLM(bundle / file)
        check_onnx_io(bundle / file, lm.session, [g for g in manifest["graphs"] if g["file"] == file])
        logits, _ = lm.step([0], 0, lm.empty_cache())
        if not (logits == logits).all():
            raise EdgeError(f"{bundle / file} produced NaN logits", "rebuild the bundle")
        runs.append({"file": file, "runtime": "onnxruntime CPU", "io_matches_manifest": True, "decode_step": "ok"})
    return runs



if __name__ == "__main__":  # `python -m edgedistil.convert.web`: install the pinned consumer runtimes now (CI does
    # this): the JS packages, and Optimum's venv (about two minutes the first time, 1.3 GB)
    from edgedistil.convert.hf_consumers import optimum_python, transformersjs_runtime

    print(web_runtime())
    print(transformersjs_runtime())
    print(optimum_python())
