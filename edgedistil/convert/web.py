"""The convert stage for `web`: records + quantized ONNX -> dist/web/ (model, tokenizer, manifest, usage).

The bundle is what a web developer copies into a site: `model.onnx` for onnxruntime-web, the tokenizer, and a
manifest that says how to call the model (I/O names, shapes, dtypes, cache layout) and what was measured.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgedistil import __version__
from edgedistil.errors import atomic_dir, write_json
from edgedistil.records import file_entry

SCHEMA_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

USAGE = """\
# {name}: web bundle

Files: `model.onnx` ({size_mb:.1f} MB, {quantization}), `tokenizer.json`, `manifest.json` (I/O, cache layout,
sha256 of every file, measured fidelity and speed).

One graph serves prefill (`input_ids` of {prefill} tokens) and decode (1 token). The KV cache has the shape
`{cache_shape}` (float32); feed the previous step's `k_cache_out`/`v_cache_out` back in. Prompts run in chunks of
{prefill} tokens: pad the last chunk and read the logits of its last real token.

```js
import * as ort from "onnxruntime-web";

const manifest = await (await fetch("manifest.json")).json();
const session = await ort.InferenceSession.create("model.onnx", {{ executionProviders: ["wasm"] }});
const shape = manifest.kv_cache.shape;
const zeros = () => new ort.Tensor("float32", new Float32Array(shape.reduce((a, b) => a * b)), shape);
let k = zeros(), v = zeros();

// ids: token ids of one chunk (prefill, padded to {prefill}) or one token (decode); position: index of ids[0]
async function step(ids, position) {{
  const out = await session.run({{
    input_ids: new ort.Tensor("int32", Int32Array.from(ids), [1, ids.length]),
    position: new ort.Tensor("int32", Int32Array.of(position), [1]),
    k_cache: k, v_cache: v,
  }});
  k = out.k_cache_out; v = out.v_cache_out;
  return out.logits;  // [1, ids.length, {vocab}]
}}
```

Tokenize with any library that reads `tokenizer.json` (for example `AutoTokenizer` of `@huggingface/transformers`).
edgedistil measured this bundle with native ONNX Runtime on the build machine (see `manifest.json`: `fidelity`,
`bench`); it has not run it in a browser yet.
"""


def run_convert_web(quantized_onnx: Path, student_dir: Path, out_dir: Path, records: dict, log=print) -> dict:
    """Assemble `out_dir` (dist/web) atomically. `records` holds the export, quantize, distill and bench records."""
    export, quant, distill, bench = records["export"], records["quantize"], records["distill"], records.get("bench")
    with atomic_dir(out_dir) as tmp:
        shutil.copy2(quantized_onnx, tmp / "model.onnx")
        for name in TOKENIZER_FILES:
            if (Path(student_dir) / name).is_file():
                shutil.copy2(Path(student_dir) / name, tmp / name)
        q = distill["quality"]
        graphs = [{**g, "file": "model.onnx"} for g in export["graphs"]]
        manifest_name = f"{records.get('recipe_name', 'student')}-student"
        usage = USAGE.format(
            name=manifest_name, size_mb=quant["bytes"] / 1e6, quantization=quant["method"],
            prefill=graphs[0]["tokens_per_call"], cache_shape=export["kv_cache"]["shape"],
            vocab=graphs[0]["outputs"][0]["shape"][-1])
        (tmp / "USAGE.md").write_text(usage)
        files = [file_entry(p, tmp) for p in sorted(tmp.iterdir()) if p.is_file()]
        not_measured = {"value": None, "reason": "the bench stage did not run"}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "target": "web",
            "name": manifest_name,
            "created_by": f"edgedistil {__version__}",
            "runtime": {"name": "onnxruntime-web", "execution_provider": "wasm", "opset": export["opset"]},
            "files": files,
            "graphs": graphs,
            "kv_cache": export["kv_cache"],
            "tokenizer": "tokenizer.json",
            "quantization": {"method": quant["method"], "scheme": quant["scheme"]},
            "fidelity": {**{k: quant["fidelity"][k] for k in ("max_abs_diff", "top1_agreement", "kl_mean",
                                                              "greedy_tokens_matching", "greedy_tokens")},
                         "reference": "fp32 PyTorch student", "runtime": "onnxruntime CPU (host)",
                         "positions_compared": quant["fidelity"]["positions_compared"]},
            "bench": _bench_entry(bench, "student") if bench else not_measured,
            "teacher_bench": _bench_entry(bench, "teacher") if bench and "teacher" in bench else not_measured,
            "speedup_vs_teacher": bench.get("speedup_vs_teacher") if bench else None,
            "quality": {"student_perplexity": q["student_perplexity"], "teacher_perplexity": q["teacher_perplexity"],
                        "top1_agreement_with_teacher": q["top1_agreement_with_teacher"],
                        "kl_teacher_student_mean": q["kl_teacher_student_mean"],
                        "quality_retained": q["quality_retained"], "heldout_tokens": q["tokens"],
                        "corpus": distill["corpus"]["name"]},
            "student": {"parameters": distill["student"]["parameters"], "layers": distill["student"]["layers"],
                        "teacher_layers": distill["student"]["teacher_layers"],
                        "teacher_parameters": distill["teacher_parameters"]},
        }
        write_json(tmp / "manifest.json", manifest)
    log(f"convert[web]: {out_dir} ({sum(f['bytes'] for f in files) / 1e6:.1f} MB in {len(files)} files)")
    return manifest


def _bench_entry(bench: dict, role: str) -> dict:
    r = bench[role]
    keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "peak_memory_mb")
    entry = {"runtime": r["runtime"], **{k: r[k] for k in keys}, "repeats": r["repeats"], "model_bytes": r["bytes"],
             "spread": {k: r[k + "_spread"] for k in keys if k + "_spread" in r}, "sha256": r["sha256"]}
    return entry
