"""The convert stage for `android`: the distilled student -> LiteRT .tflite variants, checked here -> dist/android/.

One .tflite per variant holds two signatures over one copy of the weights (litert-torch, no TensorFlow), in
LiteRT-LM's calling convention: `prefill_<P>` (tokens int32 [1, P]) and `decode` (tokens int32 [1, 1]), both with
`input_pos` int32 [T] and per layer `kv_cache_k_<i>`/`kv_cache_v_<i>` float32 [1, kv_heads, max_len, head_dim] in
and out, and `logits` [1, T, V] out. fp32 and the shipped variant are also packed with the tokenizer and LlmMetadata
into a .litertlm (convert/litertlm.py) and run through LiteRT-LM itself. Variants: fp32, fp16 weights, dynamic int8 (int8 weights, int8 activations quantized per call)
and weight-only int8 (the default: int8 weights per channel, GPTQ-rounded on held-out text, fp32 activations, with
the weights that cost most, the vocabulary matrix (tied embedding/LM head), down_proj and v_proj, kept fp16;
ai-edge-quantizer stores the rounded weights of the fp32 file as they are).
Every variant is read back from disk (signatures, names, shapes, dtypes, weight types) and run with the
ai-edge-litert interpreter (XNNPACK) against the fp32 PyTorch student on held-out text.

Static full-int8 is not offered: in the feasibility probes it missed the floors by far (top-1 9/20).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgedistil import __version__
from edgedistil.convert.manifest import evaluation_entry, quality_entry, student_entry
from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.convert.litertlm import LITERTLM_FILE, build_litertlm, check_in_litertlm, read_litertlm
from edgedistil.fidelity import floor_verdict, measure_fidelity
from edgedistil.model import EdgeLM, load_hf_folder
from edgedistil.quantize.torch_gptq import gptq_int8_rows
from edgedistil.records import file_entry, folder_fingerprint, sha256_file, versions
from edgedistil.runtimes.litert import (DECODE, LiteRtLM, check_signatures, prefill_signature, quiet_stderr,
                                       read_signatures)
from edgedistil.runtimes.torch_step import TorchLM

SCHEMA_VERSION = 1
MODEL_FILE = "model.tflite"
VARIANTS = ("fp32", "fp16", "dynamic_int8", "weight_only_int8")
PRECISION = {"fp32": "fp32", "fp16": "fp16", "dynamic_int8": "int8", "weight_only_int8": "int8"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")
RUNTIME_LABEL = "host LiteRT (x86-64 XNNPACK)"
# The converter's peak resident memory grows with the parameter count: litert-torch 0.10.0 measured about 2.0 GB for
# the 49.6M-parameter default student and 3.5 GB for the 134.5M teacher (scripts/bench_android.py remeasures it into
# docs/results/android_converter_memory.json). The estimate is a line above both points.
# weight_only_int8 keeps these fp16, matched on the consuming op's output tensor: the LM head's output is the
# signature output `logits` (a trimmed head's, [student] head_rows, after its Linear lm_head: the logits come from
# the Gather and floor that follow it), the embedding lookup's is named after torch.nn.modules.sparse.Embedding. On the 6-layer
# default, per-channel int8 everywhere measured top-1 0.962, with the vocabulary matrix fp16 0.983 and with down_proj
# too 0.992 (docs/results/android_int8_schemes.json). The 11-layer default needed GPTQ with act order and v_proj
# fp16 too (1.2M weights): 0.969 nearest, 0.975 GPTQ, 0.982 with act order, 0.987 with v_proj (docs/android.md).
KEPT_FP16 = {"vocabulary matrix (embedding/LM head)": r".*(logits|Linear_lm_head|torch\.nn\.modules\.sparse).*",
             "down_proj": r".*down_proj.*", "v_proj": r".*v_proj.*"}
# the same matrices by their PyTorch names, left out of GPTQ rounding (they stay fp16)
GPTQ_SKIP = ("lm_head", "down_proj", "v_proj")
GPTQ_ACT_ORDER = True  # quantize/torch_gptq.py: the inputs with the largest activations first
CONVERTER_BASE_BYTES = 1.2e9
CONVERTER_BYTES_PER_PARAM = 20.0


@dataclass(frozen=True)
class AndroidOptions:
    bundle_variant: str = "weight_only_int8"  # the variant dist/android ships; the others stay under litert/
    variants: tuple[str, ...] = VARIANTS
    prefill_len: int = 64
    max_len: int = 256
    fidelity_segments: int = 16  # 16 x 79 = 1,264 positions: at 316 one position moved top-1 by 0.3%
    greedy_tokens: int = 64
    # weight_only_int8's rounding: "gptq" (calibrated on held-out text between the fidelity segments) | "nearest"
    int8_rounding: str = "gptq"

    def check(self) -> "AndroidOptions":
        for v in (*self.variants, self.bundle_variant):
            if v not in VARIANTS:
                raise EdgeError(f"unknown LiteRT variant '{v}'", f"use one of: {', '.join(VARIANTS)}")
        if self.int8_rounding not in ("gptq", "nearest"):
            raise EdgeError(f"unknown int8 rounding '{self.int8_rounding}'", "use \"gptq\" or \"nearest\"")
        return self

    def built_variants(self) -> list[str]:
        return list(dict.fromkeys((*self.variants, self.bundle_variant)))

    def litertlm_variants(self) -> list[str]:
        """The variants also packed as a .litertlm and checked in LiteRT-LM: fp32 (held to the PyTorch model's
        greedy tokens) and the one the bundle ships."""
        return [v for v in self.built_variants() if v in ("fp32", self.bundle_variant)]

    def stage_config(self) -> dict:
        return {"variants": self.built_variants(), "litertlm": self.litertlm_variants(),
                "signatures": "litert-lm", "prefill_len": self.prefill_len, "max_len": self.max_len,
                "fidelity_segments": self.fidelity_segments, "greedy_tokens": self.greedy_tokens,
                # the scheme's own text: a changed scheme rebuilds the stage
                "weight_only_int8": {"rounding": self.int8_rounding, "act_order": GPTQ_ACT_ORDER,
                                     "kept_fp16": KEPT_FP16}}


# ---- pre-flight and conversion -------------------------------------------------------------------------------


def converter_peak_bytes(parameters: int) -> float:
    return CONVERTER_BASE_BYTES + CONVERTER_BYTES_PER_PARAM * parameters


def preflight_memory(parameters: int, available: int | None = None) -> dict:
    """Refuse a conversion whose estimated peak would not fit in the memory available now (the converter is
    killed by the OOM killer otherwise, minutes in, with no message)."""
    import psutil

    need = converter_peak_bytes(parameters)
    available = psutil.virtual_memory().available if available is None else available
    if need > available:
        raise EdgeError(f"converting {parameters / 1e6:.1f}M parameters to LiteRT needs about {need / 1e9:.1f} GB "
                        f"of memory, {available / 1e9:.1f} GB is available",
                        "free memory or convert on a larger machine (the estimate is 1.2 GB + 20 bytes/parameter)")
    return {"estimated_peak_gb": round(need / 1e9, 2), "available_gb": round(available / 1e9, 2)}


class LiteRtLmStep(torch.nn.Module):
    """EdgeLM.step_layers under LiteRT-LM's names: `tokens` [1, T], `input_pos` [T] (contiguous, so its first entry
    places the chunk) and `kv_cache_k_<i>`/`kv_cache_v_<i>` [1, kv_heads, C, head_dim] in and out; `logits` [1, T, V].
    Keyword inputs and a dict output, so the signatures carry these names."""

    def __init__(self, model: EdgeLM):
        super().__init__()
        self.model = model
        self.layers = len(model.model.layers)

    def forward(self, tokens, input_pos, **caches):
        k = [caches[f"kv_cache_k_{i}"] for i in range(self.layers)]
        v = [caches[f"kv_cache_v_{i}"] for i in range(self.layers)]
        logits, k, v = self.model.step_layers(tokens, input_pos[:1], k, v)
        return {"logits": logits, **{f"kv_cache_k_{i}": k[i] for i in range(self.layers)},
                **{f"kv_cache_v_{i}": v[i] for i in range(self.layers)}}


def quant_config(variant: str):
    from litert_torch.generative.quantize import quant_recipes

    return {"fp32": lambda: None, "fp16": quant_recipes.full_fp16_recipe,
            "dynamic_int8": quant_recipes.full_dynamic_recipe}[variant]()


def weight_only_int8_recipe(recovered: bool = False) -> list[dict]:
    """ai-edge-quantizer's recipe: int8 per channel with explicit dequantize everywhere, then KEPT_FP16 cast to fp16
    (later entries win). `recovered`: the weights already lie on a per-row int8 grid (GPTQ_SKIP aside), and the
    quantizer stores those codes and scales as they are instead of rounding to nearest."""
    def entry(regex, bits, dtype, granularity, algorithm):
        return {"regex": regex, "operation": "*", "algorithm_key": algorithm, "op_config": {
            "weight_tensor_config": {"num_bits": bits, "symmetric": True, "granularity": granularity, "dtype": dtype},
            "compute_precision": "FLOAT", "explicit_dequantize": True}}

    algorithm = "dequantized_weight_recovery" if recovered else "min_max_uniform_quantize"
    return [entry(".*", 8, "INT", "CHANNELWISE", algorithm),
            *(entry(regex, 16, "FLOAT", "TENSORWISE", "float_casting") for regex in KEPT_FP16.values())]


@contextlib.contextmanager
def _bytes_tensor_names():
    """ai-edge-quantizer 0.x appends b'_dequant' to a tensor name that it read as str from a file (TypeError: can
    only concatenate str (not "bytes") to str); give it bytes."""
    from ai_edge_quantizer.transformations import dequant_insert

    original = dequant_insert.insert_dequant

    def insert_dequant(transformation_input):
        tensor = transformation_input.subgraph.tensors[transformation_input.tensor_id]
        if isinstance(tensor.name, str):
            tensor.name = tensor.name.encode()
        return original(transformation_input)

    dequant_insert.insert_dequant = insert_dequant  # read when the Quantizer is built
    try:
        yield
    finally:
        dequant_insert.insert_dequant = original


def quantize_weight_only_int8(src: Path, dest: Path, recovered: bool = False) -> None:
    from ai_edge_quantizer import quantizer

    with _bytes_tensor_names(), quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
        q = quantizer.Quantizer(str(src))
        q.load_quantization_recipe(weight_only_int8_recipe(recovered))
        q.quantize().export_model(str(dest), overwrite=True)


def convert_tflite(model: EdgeLM, variant: str, path: Path, prefill_len: int, max_len: int,
                   calib_ids: np.ndarray | None = None, segments: int = 16) -> dict | None:
    """Write one .tflite with LiteRT-LM's `prefill_<P>` and `decode` signatures for `variant`. weight_only_int8
    with `calib_ids` (held-out tokens) is GPTQ-rounded on the text between their `segments` fidelity segments,
    otherwise rounded to nearest; returns how."""
    if variant == "weight_only_int8":
        rounding = None
        if calib_ids is not None:
            model, rounding = gptq_int8_rows(model, calib_ids, prefill_len, max_len, GPTQ_SKIP, segments,
                                             act_order=GPTQ_ACT_ORDER)
        fp32 = path.with_name(f".{path.name}.fp32")
        try:
            convert_tflite(model, "fp32", fp32, prefill_len, max_len)
            quantize_weight_only_int8(fp32, path, recovered=rounding is not None)
        finally:
            fp32.unlink(missing_ok=True)
        return rounding or {"rounding": "nearest"}
    with quiet_stderr():  # its import and export print absl, torchao and flatbuffer notes straight to fd 2
        import litert_torch

    k, v = model.empty_cache(max_len)
    caches = {**{f"kv_cache_k_{i}": k[i] for i in range(len(k))}, **{f"kv_cache_v_{i}": v[i] for i in range(len(v))}}

    def sample(t: int) -> dict:
        return dict(tokens=torch.zeros(1, t, dtype=torch.int32), input_pos=torch.arange(t, dtype=torch.int32), **caches)

    step = LiteRtLmStep(model).eval()
    # litert-torch prints progress bars and export notes to stdout; the stage logs its own summary line
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_stderr(), torch.no_grad():
        warnings.simplefilter("ignore")
        edge = (litert_torch.signature(prefill_signature(prefill_len), step, sample_kwargs=sample(prefill_len))
                .signature(DECODE, step, sample_kwargs=sample(1)).convert(quant_config=quant_config(variant)))
        edge.export(str(path))
    return None


# ---- the stage -----------------------------------------------------------------------------------------------


def run_litert(model_dir: Path, out_dir: Path, heldout_ids: np.ndarray, options: AndroidOptions, role: str = "student",
               log=print) -> dict:
    """Convert `model_dir`, write out_dir/<variant>/model.tflite for each variant, check each one read back from
    disk against the fp32 PyTorch model, and write out_dir/record.json. The stage folder is replaced atomically."""
    options.check()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fp32 reference; more threads measured slower on a busy 2-core machine
    try:
        return _run_litert(Path(model_dir), out_dir, heldout_ids, options, role, log)
    finally:
        torch.set_num_threads(threads)


def _run_litert(model_dir: Path, out_dir: Path, heldout_ids: np.ndarray, options: AndroidOptions, role: str,
                log) -> dict:
    model = load_hf_folder(model_dir, max_len=options.max_len).eval()
    parameters = sum(p.numel() for p in model.parameters())  # a tied embedding counts once
    memory = preflight_memory(parameters)
    c = model.cfg
    cache_shape = [c.num_hidden_layers, 1, c.num_key_value_heads, options.max_len, c.head_dim]
    reference = TorchLM(model, options.max_len)
    results = {}
    with atomic_dir(out_dir) as tmp:
        for variant in options.built_variants():
            folder = tmp / variant
            folder.mkdir()
            path = folder / MODEL_FILE
            t0 = time.perf_counter()
            rounding = convert_tflite(model, variant, path, options.prefill_len, options.max_len,
                                      heldout_ids if options.int8_rounding == "gptq" else None,
                                      options.fidelity_segments)
            convert_s = time.perf_counter() - t0
            signatures = read_signatures(path)
            check_signatures(path, signatures, options.prefill_len, cache_shape, c.vocab_size)
            t1 = time.perf_counter()
            fidelity = measure_fidelity(reference, LiteRtLM(path, threads=1), heldout_ids, options.prefill_len,
                                        segments=options.fidelity_segments, greedy_tokens=options.greedy_tokens)
            fidelity_s = time.perf_counter() - t1
            verdict = floor_verdict(fidelity, PRECISION[variant])
            results[variant] = {
                "path": f"{variant}/{MODEL_FILE}", "bytes": path.stat().st_size,
                "convert_seconds": round(convert_s, 1), "signatures": signatures,
                "weight_types": weight_types(path),
                "kept_fp16": sorted(KEPT_FP16) if variant == "weight_only_int8" else [],
                "int8_rounding": rounding,
                "fidelity": {**fidelity, "reference": f"fp32 PyTorch {role}", "runtime": f"{RUNTIME_LABEL}, "
                             "ai-edge-litert Interpreter, 1 thread", "seconds": round(fidelity_s, 1),
                             "precision": PRECISION[variant], "meets_floors": verdict["passed"],
                             "floor_failures": verdict["failures"]},
            }
            if variant in options.litertlm_variants():
                results[variant]["litertlm"] = litertlm_entry(path, model_dir, reference, heldout_ids, options, log)
            log(f"convert[litert-{role}]: {variant}: {path.stat().st_size / 1e6:.1f} MB in {convert_s:.0f}s, top-1 "
                f"{fidelity['top1_agreement']:.4f}, KL {fidelity['kl_mean']:.2e}, greedy "
                f"{fidelity['greedy_tokens_matching']}/{fidelity['greedy_tokens']}"
                f"{'' if verdict['passed'] else ' (below the ' + PRECISION[variant] + ' floors)'}")
        record = {
            "stage": f"convert[litert-{role}]", "role": role,
            "source": {"model_dir": str(model_dir), "fingerprint": folder_fingerprint(model_dir)},
            "parameters": parameters, "converter_memory": memory, "prefill_len": options.prefill_len,
            "max_len": options.max_len, "cache_shape": cache_shape, "variants": results,
            "not_offered": {"full_int8": "static full-int8 missed the fidelity floors by far in the feasibility "
                                         "probes (top-1 9/20); dynamic int8 keeps activations in float between ops"},
            "versions": {**versions(), **_litert_versions()},
        }
        write_json(tmp / "record.json", record)
    return record


def litertlm_entry(tflite: Path, model_dir: Path, reference: TorchLM, heldout_ids: np.ndarray,
                   options: AndroidOptions, log) -> dict:
    """Pack `tflite` as model.litertlm beside it, read it back, and run it through LiteRT-LM against `reference`."""
    path = tflite.with_name(LITERTLM_FILE)
    t0 = time.perf_counter()
    packed = build_litertlm(tflite, model_dir, path, options.max_len)
    checked = check_in_litertlm(path, model_dir, reference, heldout_ids, options.prefill_len)
    log(f"convert[litertlm]: {tflite.parent.name}: LiteRT-LM greedy {checked['tokens_matching']}/"
        f"{checked['reference_tokens']} tokens as PyTorch's over {len(checked['prompts'])} prompts")
    return {"path": f"{tflite.parent.name}/{LITERTLM_FILE}", "bytes": path.stat().st_size, **packed,
            "check": checked, "seconds": round(time.perf_counter() - t0, 1)}


def weight_types(path: Path) -> dict[str, int]:
    """How many weight matrices the file stores in each type, read back from it: the 2-D inputs of its DEQUANTIZE
    ops, and the float weights FULLY_CONNECTED and EMBEDDING_LOOKUP read directly (the signatures share them)."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_stderr():
        interpreter = Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    weights = set()
    for op in interpreter._get_ops_details():  # no public op listing; the benchmark tool's is not in Python
        slot = {"DEQUANTIZE": 0, "FULLY_CONNECTED": 1, "EMBEDDING_LOOKUP": 1}.get(op["op_name"])
        if slot is not None and len(op["inputs"]) > slot:
            t = tensors.get(int(op["inputs"][slot]))
            if t is not None and len(t["shape"]) == 2 and not t["name"].endswith("_dequant"):
                weights.add(t["index"])
    counts: dict[str, int] = {}
    for i in weights:
        name = np.dtype(tensors[i]["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _litert_versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("litert-torch", "ai-edge-litert", "litert-lm-builder",
                                                       "litert-lm-api")}


# ---- the bundle ----------------------------------------------------------------------------------------------


def run_convert_android(litert_dir: Path, student_dir: Path, out_dir: Path, records: dict, variant: str,
                        log=print) -> dict:
    """Assemble dist/android atomically from the litert stage's `variant`, the tokenizer and the records."""
    litert, distill = records["litert"], records["distill"]
    if variant not in litert["variants"]:
        raise EdgeError(f"the LiteRT variant '{variant}' was not built (built: {', '.join(litert['variants'])})",
                        "rebuild with `edgedistil build --target android --force convert`")
    chosen = litert["variants"][variant]
    if "litertlm" not in chosen:
        raise EdgeError(f"the LiteRT variant '{variant}' has no .litertlm",
                        "rebuild with `edgedistil build --target android --force convert`")
    with atomic_dir(out_dir) as tmp:
        shutil.copy2(Path(litert_dir) / chosen["path"], tmp / MODEL_FILE)
        shutil.copy2(Path(litert_dir) / chosen["litertlm"]["path"], tmp / LITERTLM_FILE)
        for name in TOKENIZER_FILES:
            if (Path(student_dir) / name).is_file():
                shutil.copy2(Path(student_dir) / name, tmp / name)
        signatures = read_signatures(tmp / MODEL_FILE)  # the shipped file, not the intention
        prefill = prefill_signature(litert["prefill_len"])
        graphs = [{"name": name, "file": MODEL_FILE, "signature": name,
                   "tokens_per_call": litert["prefill_len"] if name == prefill else 1, **signatures[name]}
                  for name in (prefill, DECODE)]
        shipped = read_litertlm(tmp / LITERTLM_FILE)
        if shipped["tflite_sha256"] != sha256_file(tmp / MODEL_FILE):
            raise EdgeError(f"{LITERTLM_FILE} does not hold the shipped {MODEL_FILE}",
                            "rebuild with `edgedistil build --target android --force convert`")
        cache_shape = litert["cache_shape"]
        (tmp / "USAGE.md").write_text(usage(litert, variant, records.get("recipe_name", "student")))
        files = [file_entry(p, tmp) for p in sorted(tmp.rglob("*")) if p.is_file()]
        f = chosen["fidelity"]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "target": "android",
            "name": f"{records.get('recipe_name', 'student')}-student",
            "created_by": f"edgedistil {__version__}",
            "runtime": {"name": "LiteRT-LM", "format": "litertlm", "model": LITERTLM_FILE,
                        "android": f"{LITERTLM_MAVEN}:{LITERTLM_ANDROID_VERSION}",
                        "interpreter_model": MODEL_FILE, "min_litert": "2.x (never tflite-runtime 2.14)",
                        "prefill_len": litert["prefill_len"], "signatures": [prefill, DECODE],
                        "bind_by": "name (LiteRT lists signature inputs alphabetically)"},
            "litertlm": {"file": LITERTLM_FILE, "sections": shipped["sections"],
                         "tflite_sha256": shipped["tflite_sha256"], "llm_metadata": shipped["llm_metadata"],
                         "stop_tokens": chosen["litertlm"]["stop_tokens"],
                         "start_token": chosen["litertlm"]["start_token"],
                         "chat_template": chosen["litertlm"]["chat_template"],
                         "checked_in_litertlm": {v: r["litertlm"]["check"] for v, r in litert["variants"].items()
                                                 if "litertlm" in r}},
            "files": files,
            "graphs": graphs,
            "kv_cache": {"layers": cache_shape[0], "kv_heads": cache_shape[2], "head_dim": cache_shape[4],
                         "max_len": cache_shape[3], "shape": cache_shape, "dtype": "float32",
                         "physical": "one tensor per layer, kv_cache_k_<i> and kv_cache_v_<i> "
                                     f"{[1, *cache_shape[2:]]}, in and out under the same names (LiteRT-LM's "
                                     "layout: the context length is dimension 2 of K)"},
            "tokenizer": "tokenizer.json",
            "quantization": {"method": variant, "precision": PRECISION[variant],
                             "variants": {v: {"bytes": r["bytes"], "top1_agreement": r["fidelity"]["top1_agreement"],
                                              "kl_mean": r["fidelity"]["kl_mean"],
                                              "greedy_tokens_matching": r["fidelity"]["greedy_tokens_matching"],
                                              "perplexity_change": r["fidelity"]["perplexity_change"],
                                              "meets_floors": r["fidelity"]["meets_floors"]}
                                          for v, r in litert["variants"].items()},
                             "not_offered": litert.get("not_offered", {})},
            "fidelity": {**{k: f[k] for k in (
                "max_abs_diff", "top1_agreement", "kl_mean", "greedy_tokens_matching", "greedy_tokens",
                "greedy_first_divergence", "positions_compared", "perplexity", "perplexity_reference",
                "perplexity_change", "meets_floors", "floor_failures", "near_tie_share",
                "top1_agreement_outside_near_ties")},
                "top1_agreement_ci95": f.get("top1_agreement_ci95"),
                "reference": "fp32 PyTorch student", "runtime": f["runtime"]},
            **_bench_entries(records.get("bench_android")),
            "quality": quality_entry(distill),
            "evaluation": evaluation_entry(records.get("eval")),
            "student": student_entry(distill),
        }
        write_json(tmp / "manifest.json", manifest)
    log(f"convert[android]: {out_dir} ({sum(x['bytes'] for x in files) / 1e6:.1f} MB in {len(files)} files, "
        f"{variant})")
    return manifest


BENCH_KEYS = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "peak_memory_mb")


def _bench_entries(bench: dict | None) -> dict:
    """`bench`/`teacher_bench` at the profile's thread count; every thread count under `bench_threads`."""
    if not bench:
        missing = {"value": None, "reason": "the android bench stage did not run"}
        return {"bench": missing, "teacher_bench": missing, "speedup_vs_teacher": None}
    out = {}
    for key, role in (("bench", "student"), ("teacher_bench", "teacher")):
        r = bench.get(role, {}).get(str(bench["threads"]))
        out[key] = ({"runtime": r["runtime"], **{k: r[k] for k in BENCH_KEYS}, "threads": bench["threads"],
                     "repeats": r["repeats"], "model_bytes": r["bytes"], "sha256": r["sha256"],
                     "load_seconds": r["load_seconds"], "binding": r["binding"],
                     "spread": {k: r[k + "_spread"] for k in BENCH_KEYS if k + "_spread" in r},
                     "python_glue": r.get("python_glue")}
                    if r else {"value": None, "reason": f"{role} was not benchmarked"})
    out["bench_threads"] = {role: {t: {k: r[k] for k in BENCH_KEYS} for t, r in bench.get(role, {}).items()}
                            for role in ("student", "teacher")}
    out["speedup_vs_teacher"] = bench.get("speedup_vs_teacher")
    # LiteRT-LM's own benchmark of the .litertlm (student and teacher), beside our loop on the same graph
    out["litertlm_bench"] = bench.get("litertlm") or {"value": None, "reason": "no .litertlm was benchmarked"}
    return out


def verify_tflite(bundle: Path, manifest: dict) -> list[dict]:
    """The bundle's .tflite declares what its manifest says, and one decode step gives finite logits."""
    runs = []
    for file in sorted({g["file"] for g in manifest["graphs"]}):
        path = Path(bundle) / file
        signatures = read_signatures(path)
        for g in manifest["graphs"]:
            have = signatures.get(g["signature"])
            if have is None or have["inputs"] != g["inputs"] or have["outputs"] != g["outputs"]:
                raise EdgeError(f"{path}: signature {g['signature']} does not match the manifest's graph {g['name']}",
                                "copy the whole bundle again, or rebuild it")
        lm = LiteRtLM(path)
        logits, _ = lm.step([0], 0, lm.empty_cache())
        if not np.isfinite(logits).all():
            raise EdgeError(f"{path} produced non-finite logits in LiteRT", "rebuild the bundle")
        runs.append({"file": file, "runtime": RUNTIME_LABEL, "signatures": sorted(signatures),
                     "io_matches_manifest": True, "decode_step": "ok"})
    runs.append(verify_litertlm(Path(bundle) / LITERTLM_FILE, Path(bundle) / MODEL_FILE))
    return runs


def verify_litertlm(path: Path, tflite: Path) -> dict:
    """The .litertlm holds the bundle's .tflite, and LiteRT-LM opens it and generates."""
    from edgedistil.runtimes.litertlm import LiteRtLmRuntime

    if read_litertlm(path)["tflite_sha256"] != sha256_file(tflite):
        raise EdgeError(f"{path} does not hold the bundle's {tflite.name}", "copy the whole bundle again, or rebuild it")
    runtime = LiteRtLmRuntime(path)
    try:
        got = runtime.generate("Hello", 4)
    finally:
        runtime.close()
    if got.new_tokens < 1:
        raise EdgeError(f"LiteRT-LM generated nothing from {path}", "rebuild the bundle")
    return {"file": path.name, "runtime": "LiteRT-LM (litert-lm-api, CPU)", "generated_tokens": got.new_tokens}


# The Android runtime this file is written for. litertlm-android 0.18.0 is the release Android's LiteRT-LM guide
# documents (minSdk 24), the line of the PyPI runtime (litert-lm-api 0.18.1) that runs every bundle here; the file
# is container format 1.7 and LiteRT-LM's reader refuses only another major version (schema/core/litertlm_read.cc).
LITERTLM_MAVEN = "com.google.ai.edge.litertlm:litertlm-android"
LITERTLM_ANDROID_VERSION = "0.18.0"

USAGE = """\
# {name}: Android bundle (LiteRT-LM)

`model.litertlm` ({litertlm_mb:.1f} MB, {variant}) is one file for LiteRT-LM, Google's on-device LLM runtime: the
model, its tokenizer, {template}the stop tokens {stop_tokens} and a greedy sampler (TOP_P with k = 1), with
room for {max_len} tokens. The runtime tokenizes, applies the template, prefills, decodes and stops; the app sends
text and reads text.

## Gradle

```kotlin
dependencies {{
    implementation("{maven}:{version}")
}}
```

Copy `model.litertlm` to the device's file system (`adb push model.litertlm /data/local/tmp/`, or download it into
`context.filesDir`); LiteRT-LM memory-maps it from a path, not from `assets/`.

## Kotlin

```kotlin
import com.google.ai.edge.litertlm.Backend
import com.google.ai.edge.litertlm.Engine
import com.google.ai.edge.litertlm.EngineConfig
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

// initialize() loads the weights: off the main thread, once per app
val engine = withContext(Dispatchers.IO) {{
    Engine(EngineConfig(modelPath = "${{context.filesDir}}/model.litertlm", backend = Backend.CPU,
                        cacheDir = context.cacheDir.path)).also {{ it.initialize() }}
}}

// one Conversation per chat: it keeps the history and applies the model's chat template
engine.createConversation().use {{ conversation ->
    conversation.sendMessageAsync("{chat_message}").collect {{ chunk -> print(chunk) }}  // streamed as decoded
}}
engine.close()
```

## Checked before shipping

The build ran this exact file through the PyPI build of the same runtime (litert-lm-api, CPU, x86-64) and compared
its greedy output with the fp32 PyTorch student's: {checked}. `manifest.json` has each prompt, the fidelity of the
{variant} weights against the fp32 student (top-1 agreement, KL, on held-out text) and the benchmark figures.
Host figures are {runtime}, not a phone; docs/android.md says how to run LiteRT-LM's own benchmark on one.

## The raw LiteRT model

`model.tflite` is the same graph as the one inside `model.litertlm` (same sha256), for apps that drive LiteRT's
`Interpreter`/`CompiledModel` themselves: signatures `{prefill}` (`tokens` Int32 [1, {prefill_len}]) and `decode`
(`tokens` [1, 1]), both with `input_pos` Int32 [T] (the positions of `tokens`, contiguous) and per layer
`kv_cache_k_<i>`, `kv_cache_v_<i>` Float32 {layer_shape} in and out under the same names, returning `logits`
Float32 [1, T, {vocab}]. Bind by name; the cache a call returns is the next call's.
"""


def usage(litert: dict, variant: str, name: str) -> str:
    chosen = litert["variants"][variant]
    cache_shape = litert["cache_shape"]
    logits = next(o for o in chosen["signatures"]["decode"]["outputs"] if o["name"] == "logits")
    lm = chosen["litertlm"]
    check = lm["check"]
    checked = (f"{check['tokens_matching']} of {check['reference_tokens']} greedy tokens as PyTorch's over "
               f"{len(check['prompts'])} prompts ({', '.join(p['kind'] for p in check['prompts'])})")
    chat = next((p["message"] for p in check["prompts"] if "message" in p), "Hello!")
    return USAGE.format(name=f"{name}-student", litertlm_mb=lm["bytes"] / 1e6, variant=variant,
                        stop_tokens=lm["stop_tokens"], max_len=litert["max_len"], maven=LITERTLM_MAVEN,
                        template="the chat template, " if lm["chat_template"] else "",
                        version=LITERTLM_ANDROID_VERSION, chat_message=chat, checked=checked, runtime=RUNTIME_LABEL,
                        prefill=prefill_signature(litert["prefill_len"]), prefill_len=litert["prefill_len"],
                        layer_shape=[1, *cache_shape[2:]], vocab=logits["shape"][-1])
