"""The convert stage for `ios`: the distilled student -> Core ML .mlpackage variants, checked on Linux -> dist/ios/.

- iOS 18+ (the default): one ML Program package with two functions, `prefill` (T = P tokens) and `decode` (T = 1),
  sharing their weights (`ct.utils.save_multifunction`) and one stateful fp16 KV cache (`ct.StateType`), so an app
  never copies the cache in and out.
- iOS 17 (`min_ios = 17`): no Core ML states, so one function `main` takes and returns the cache; `input_ids` has
  the enumerated shapes [1, P] and [1, 1].
- Compute precision (`compute`): "fp16" (the default) runs every op in fp16, as the Neural Engine needs; "mixed"
  keeps the ops that read weights (linear, matmul, the embedding and RoPE gathers) in fp16 and runs everything
  between them (the residual stream, RMSNorm, softmax, RoPE, SiLU) in fp32, for the GPU and CPU. Weights are fp16
  either way. A distilled SmolLM2's residual stream reaches |x| ~ 260, where fp16 steps by 0.25, so "mixed"
  flips fewer near-tied tokens; each build's coreml/record.json has the figures for the one it used.

Every variant (fp16; int8 block-wise on iOS 18, per channel on iOS 17, with the vocabulary-sized embedding/LM head
kept fp16; int4 block-wise; 4-bit palettization; the RoPE tables always stay fp16) is read back from disk: its spec
(functions, I/O, states, op histogram, deployment target), the precision of each weight as stored, the float type
each op computes in, and its numbers, run with the MIL reference (edgedistil.runtimes.coreml_mil_reference)
against the fp32 PyTorch student on held-out text. Core ML itself, and so speed, needs a Mac (`bench --target ios`).
"""

from __future__ import annotations

import collections
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgedistil import __version__
from edgedistil.convert.ios_bench import write_bench_package
from edgedistil.convert.ios_package import (check_spec, compute_dtypes, inspect_package, package_bytes,
                                            weight_precisions, weights_in_pytorch)
from edgedistil.convert.ios_usage import STATEFUL_SWIFT, STATELESS_SWIFT, USAGE
from edgedistil.convert.manifest import evaluation_entry, quality_entry, student_entry
from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.fidelity import measure_fidelity
from edgedistil.model import EdgeLM, load_hf_folder
from edgedistil.records import file_entry, folder_fingerprint, versions
from edgedistil.runtimes.coreml_mil_reference import quiet_coremltools
from edgedistil.runtimes.coreml_model import StatefulStep, StatelessStep
from edgedistil.runtimes.torch_step import TorchLM

SCHEMA_VERSION = 1
PACKAGE = "model.mlpackage"
VARIANTS = ("fp16", "int8", "int4", "pal4")
DEFAULT_VARIANTS = VARIANTS  # pal4's k-means (scikit-learn): 34 s on the embedded default (coreml/record.json)
SUPPORTED_MIN_IOS = (17, 18)
INT4_BLOCKS = (16, 8, 4)  # block 32 would not divide every width; checked per weight, never skipped silently
# iOS 18 int8: blocks of 32 along the input (5x lower KL than per-channel scales on the embedded default,
# scripts/bench_quant_sensitivity.py); iOS 17 has no per-block int8, so it keeps per channel
INT8_BLOCKS = (32, 16, 8, 4)
NOT_ON_LINUX = "Core ML execution needs macOS"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
COMPUTE = ("mixed", "fp16")
FP16_OPS = ("linear", "matmul", "gather", "gather_along_axis")  # what "mixed" keeps in fp16: the weight readers


@dataclass(frozen=True)
class IosOptions:
    min_ios: int = 18
    compute: str = "fp16"  # "fp16": every op fp16 (Neural Engine); "mixed": fp32 between the fp16 matmuls
    fidelity_segments: int = 16  # held-out segments teacher-forced through each variant: 16 x 79 = 1264 positions
    bundle_variant: str = "int8"  # the variant dist/ios ships; the others are kept under coreml/ with their figures
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    prefill_len: int = 64
    max_len: int = 256
    greedy_tokens: int = 64

    def check(self) -> "IosOptions":
        if self.min_ios not in SUPPORTED_MIN_IOS:
            raise EdgeError(f"min_ios {self.min_ios} is not supported (supported: 17, 18)",
                            "use --min-ios 18 (stateful KV cache) or 17 (cache as inputs and outputs)")
        if self.compute not in COMPUTE:
            raise EdgeError(f"unknown Core ML compute precision '{self.compute}'",
                            "use compute = \"mixed\" (fp32 between fp16 matmuls) or \"fp16\" (Neural Engine)")
        for v in (*self.variants, self.bundle_variant):
            if v not in VARIANTS:
                raise EdgeError(f"unknown Core ML variant '{v}'", f"use one of: {', '.join(VARIANTS)}")
        if self.min_ios < 18 and self.bundle_variant == "int4":
            raise EdgeError("int4 block-wise weights need iOS 18", "use min_ios 18 or the int8 variant")
        return self

    def built_variants(self) -> list[str]:
        """The variants the coreml stage builds: the asked ones and the bundle's, less int4 before iOS 18."""
        wanted = dict.fromkeys((*self.variants, self.bundle_variant))
        return [v for v in wanted if not (v == "int4" and self.min_ios < 18)]

    def stage_config(self) -> dict:
        """What the variants depend on: the bundle's choice among built variants is not part of it."""
        return {"min_ios": self.min_ios, "compute": self.compute, "variants": self.built_variants(),
                "prefill_len": self.prefill_len,
                "max_len": self.max_len, "fidelity_segments": self.fidelity_segments,
                "greedy_tokens": self.greedy_tokens}


# ---- conversion ------------------------------------------------------------------------------------------------


def _reads_weights(op) -> bool:
    return op.op_type in FP16_OPS


def _convert(module: torch.nn.Module, example: tuple, inputs: list, outputs: list, states: list, target,
             compute: str):
    quiet_coremltools()
    import coremltools as ct

    precision = ct.precision.FLOAT16 if compute == "fp16" else \
        ct.transform.FP16ComputePrecision(op_selector=_reads_weights)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings, and coremltools' "torch 2.13 is untested" notice
        traced = torch.jit.trace(module, example, check_trace=False)
        return ct.convert(traced, inputs=inputs, outputs=outputs, states=states or None, convert_to="mlprogram",
                          minimum_deployment_target=target, compute_precision=precision)


def convert_stateful(model: EdgeLM, max_len: int, tokens: int, compute: str = "fp16"):
    """One iOS 18 function for `tokens` tokens per call, the cache in states `k_cache`/`v_cache` (fp16)."""
    import coremltools as ct

    step = StatefulStep(model, max_len).eval()
    example = (torch.zeros(1, tokens, dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    shape = tuple(step.k_cache.shape)
    ml = _convert(step, example,
                  [ct.TensorType("input_ids", shape=(1, tokens), dtype=np.int32),
                   ct.TensorType("position", shape=(1,), dtype=np.int32)],
                  [ct.TensorType("logits", dtype=np.float16)],
                  [ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name="k_cache"),
                   ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name="v_cache")],
                  ct.target.iOS18, compute)
    step.reset()  # tracing ran the module once and wrote its buffers
    return ml


def convert_stateless(model: EdgeLM, max_len: int, prefill_len: int, compute: str = "fp16"):
    """One iOS 17 function `main`: input_ids [1, P] or [1, 1], the cache in and out as fp16 tensors."""
    import coremltools as ct

    c = model.cfg
    shape = (c.num_hidden_layers, 1, c.num_key_value_heads, max_len, c.head_dim)
    example = (torch.zeros(1, prefill_len, dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
               torch.zeros(shape), torch.zeros(shape))
    return _convert(StatelessStep(model).eval(), example,
                    [ct.TensorType("input_ids", shape=ct.EnumeratedShapes([(1, prefill_len), (1, 1)],
                                                                          default=(1, 1)), dtype=np.int32),
                     ct.TensorType("position", shape=(1,), dtype=np.int32),
                     ct.TensorType("k_cache", shape=shape, dtype=np.float16),
                     ct.TensorType("v_cache", shape=shape, dtype=np.float16)],
                    [ct.TensorType("logits", dtype=np.float16), ct.TensorType("k_cache_out", dtype=np.float16),
                     ct.TensorType("v_cache_out", dtype=np.float16)],
                    [], ct.target.iOS17, compute)


def weight_names(mlmodel) -> list[str]:
    """The consts to compress: every matrix (linear and embedding weights), never the RoPE tables or 1-D weights."""
    fn = mlmodel._mil_program.functions["main"]
    return [op.name for op in fn.operations if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
            and op.outputs[0].val.ndim == 2 and op.outputs[0].val.dtype.kind == "f" and "rope" not in op.name]


def weight_block(mlmodel, blocks: tuple[int, ...], variant: str) -> int:
    """The largest of `blocks` that divides every weight's input width (a weight is never skipped silently)."""
    fn = mlmodel._mil_program.functions["main"]
    widths = {op.name: op.outputs[0].val.shape[-1] for op in fn.operations if op.name in set(weight_names(mlmodel))}
    for block in blocks:
        if all(w % block == 0 for w in widths.values()):
            return block
    odd = next(n for n, w in widths.items() if w % blocks[-1])
    raise EdgeError(f"{variant} block-wise: weight {odd} has width {widths[odd]}, not a multiple of any block in "
                    f"{blocks}", "use the fp16 variant for this model" if variant == "int8" else
                    "use the int8 variant for this model")


def kept_fp16(mlmodel, variant: str, vocab_size: int) -> list[str]:
    """The weights `variant` leaves in fp16 on purpose: for int8, the vocabulary-sized matrices (the embedding and
    LM head, one tied const in most students): the LM head is the weight that costs most
    (scripts/bench_quant_sensitivity.py); with it kept, the embedded default's int8 package meets the 0.98 floor
    (docs/benchmarks.md, iOS)."""
    if variant != "int8":
        return []
    fn = mlmodel._mil_program.functions["main"]
    names = set(weight_names(mlmodel))
    return [op.name for op in fn.operations if op.name in names and vocab_size in op.outputs[0].val.shape]


def compress(mlmodel, variant: str, min_ios: int = 18, vocab_size: int = 0):
    """`variant` of a converted fp16 model (fp16: the model itself). Raises if a weight was left uncompressed."""
    import coremltools.optimize.coreml as cto

    if variant == "fp16":
        return mlmodel
    keep = set(kept_fp16(mlmodel, variant, vocab_size))
    names = [n for n in weight_names(mlmodel) if n not in keep]
    if variant == "int8" and min_ios < 18:
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                          weight_threshold=1)
        fn = cto.linear_quantize_weights
    elif variant == "int8":
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_block",
                                          block_size=weight_block(mlmodel, INT8_BLOCKS, variant), weight_threshold=1)
        fn = cto.linear_quantize_weights
    elif variant == "int4":
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                          block_size=weight_block(mlmodel, INT4_BLOCKS, variant), weight_threshold=1)
        fn = cto.linear_quantize_weights
    else:
        cfg = cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_tensor", weight_threshold=1)
        fn = cto.palettize_weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(mlmodel, config=cto.OptimizationConfig(op_name_configs={n: cfg for n in names}))
    left = [op.name for op in out._mil_program.functions["main"].operations
            if op.op_type == "const" and op.name in set(names)]
    if left:
        raise EdgeError(f"{variant}: coremltools left {len(left)} weight(s) uncompressed, e.g. {left[0]}",
                        "use the int8 variant, or report this model's config.json")
    return out


def save_package(models: dict, path: Path, default: str) -> None:
    """Save one function (`main`) or several sharing weights (iOS 18 multifunction) as `path`."""
    import coremltools as ct

    if list(models) == ["main"]:
        models["main"].save(str(path))
        return
    parts = path.parent / f".{path.name}.parts"
    parts.mkdir()
    try:
        desc = ct.utils.MultiFunctionDescriptor()
        for name, ml in models.items():
            ml.save(str(parts / f"{name}.mlpackage"))
            desc.add_function(str(parts / f"{name}.mlpackage"), src_function_name="main", target_function_name=name)
        desc.default_function_name = default
        ct.utils.save_multifunction(desc, str(path))
    finally:
        shutil.rmtree(parts, ignore_errors=True)


# ---- the stage -----------------------------------------------------------------------------------------------------


def run_coreml(student_dir: Path, out_dir: Path, heldout_ids: np.ndarray, options: IosOptions, log=print) -> dict:
    """Convert the student, build each variant under out_dir/<variant>/model.mlpackage, check each one read back
    from disk, and write out_dir/record.json. The stage folder is replaced atomically."""
    options.check()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fp32 reference: on a busy 2-core machine more threads measured ~3x slower
    try:
        return _run_coreml(student_dir, out_dir, heldout_ids, options, log)
    finally:
        torch.set_num_threads(threads)


def _run_coreml(student_dir: Path, out_dir: Path, heldout_ids: np.ndarray, options: IosOptions, log) -> dict:
    from edgedistil.runtimes.coreml_mil_reference import MilReferenceLM

    model = load_hf_folder(student_dir, max_len=options.max_len).eval()
    reference = TorchLM(model, options.max_len)
    variants = options.built_variants()
    if options.min_ios < 18 and "int4" in (*options.variants, options.bundle_variant):
        log("convert[ios]: int4 block-wise needs iOS 18; not built for min_ios 17 (recorded)")
    t0 = time.perf_counter()
    if options.min_ios >= 18:
        base = {"prefill": convert_stateful(model, options.max_len, options.prefill_len, options.compute),
                "decode": convert_stateful(model, options.max_len, 1, options.compute)}
    else:
        base = {"main": convert_stateless(model, options.max_len, options.prefill_len, options.compute)}
    convert_s = time.perf_counter() - t0
    log(f"convert[ios]: traced and converted to Core ML (iOS {options.min_ios}, {options.compute} compute) in "
        f"{convert_s:.1f}s")

    results = {}
    with atomic_dir(out_dir) as tmp:
        for variant in variants:
            t1 = time.perf_counter()
            folder = tmp / variant
            folder.mkdir()
            path = folder / PACKAGE
            save_package({n: compress(m, variant, options.min_ios, model.cfg.vocab_size) for n, m in base.items()},
                         path, "decode")
            build_s = time.perf_counter() - t1
            info = inspect_package(path)
            check_spec(info, model, options)
            t2 = time.perf_counter()
            fidelity = measure_fidelity(reference, MilReferenceLM(path), heldout_ids, options.prefill_len,
                                        segments=options.fidelity_segments, greedy_tokens=options.greedy_tokens)
            fidelity_s = time.perf_counter() - t2
            precisions = weight_precisions(path)
            in_pytorch = weights_in_pytorch(model, path, heldout_ids, options)
            results[variant] = {
                "path": f"{variant}/{PACKAGE}", "bytes": package_bytes(path), "build_seconds": round(build_s, 1),
                "spec": info, "compute_dtypes": compute_dtypes(path), "weights": precisions,
                "weights_in_pytorch": in_pytorch,
                "kept_fp16": kept_fp16(next(iter(base.values())), variant, model.cfg.vocab_size),
                "weights_stored": dict(collections.Counter(
                    f"{w['stored']} ({w['op']})" for w in precisions)),
                "fidelity": {**fidelity, "reference": "fp32 PyTorch student",
                             "runtime": "MIL reference (coremltools op implementations on Linux; not Core ML)",
                             "seconds": round(fidelity_s, 1)},
            }
            log(f"convert[ios]: {variant}: {results[variant]['bytes'] / 1e6:.1f} MB, top-1 "
                f"{fidelity['top1_agreement']:.4f}, KL {fidelity['kl_mean']:.2e}, greedy "
                f"{fidelity['greedy_tokens_matching']}/{fidelity['greedy_tokens']} ({fidelity_s:.0f}s MIL reference)")
        record = {
            "stage": "convert[coreml]", "source": {"model_dir": str(student_dir),
                                                "fingerprint": folder_fingerprint(Path(student_dir))},
            "min_ios": options.min_ios, "stateful": options.min_ios >= 18, "compute": options.compute,
            "convert_seconds": round(convert_s, 1),
            "prefill_len": options.prefill_len, "max_len": options.max_len,
            "variants": results,
            "not_built": {"int4": "int4 block-wise weights need iOS 18"} if options.min_ios < 18 else {},
            "versions": {**versions(), "coremltools": _coremltools_version()},
        }
        write_json(tmp / "record.json", record)
    return record


def _coremltools_version() -> str:
    from importlib import metadata

    return metadata.version("coremltools")


def run_convert_ios(coreml_dir: Path, student_dir: Path, out_dir: Path, records: dict, variant: str,
                    log=print) -> dict:
    """Assemble dist/ios atomically from the coreml stage's `variant`, the tokenizer and the records."""
    coreml, distill = records["coreml"], records["distill"]
    if variant not in coreml["variants"]:
        raise EdgeError(f"the Core ML variant '{variant}' was not built (built: {', '.join(coreml['variants'])})",
                        "rebuild with `edgedistil convert --target ios`")
    chosen = coreml["variants"][variant]
    info = chosen["spec"]
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(Path(coreml_dir) / chosen["path"], tmp / PACKAGE)
        for name in TOKENIZER_FILES:
            if (Path(student_dir) / name).is_file():
                shutil.copy2(Path(student_dir) / name, tmp / name)
        graphs = [{"name": f["name"], "file": PACKAGE, "function": f["name"],
                   "tokens_per_call": _tokens_per_call(f, coreml["prefill_len"]),
                   "inputs": f["inputs"], "outputs": f["outputs"], "states": f["states"]} for f in info["functions"]]
        c = graphs[0]
        cache_shape = (c["states"] or [i for i in c["inputs"] if i["name"] == "k_cache"])[0]["shape"]
        (tmp / "USAGE.md").write_text(usage(coreml, variant, cache_shape, records.get("recipe_name", "student")))
        write_bench_package(tmp / "bench", name=f"{records.get('recipe_name', 'student')}-student", variant=variant,
                            target=info["deployment_target"], stateful=coreml["stateful"],
                            prefill_len=coreml["prefill_len"], max_len=coreml["max_len"], cache_shape=cache_shape)
        files = [file_entry(p, tmp) for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "target": "ios",
            "name": f"{records.get('recipe_name', 'student')}-student",
            "created_by": f"edgedistil {__version__}",
            "runtime": {"name": "Core ML", "format": "mlprogram", "min_ios": coreml["min_ios"],
                        "deployment_target": info["deployment_target"], "stateful": coreml["stateful"],
                        "compute": coreml.get("compute", "fp16"),
                        "default_function": info["default_function"], "prefill_len": coreml["prefill_len"]},
            "min_ios": coreml["min_ios"],
            "files": files,
            "graphs": graphs,
            "kv_cache": {"layers": cache_shape[0], "kv_heads": cache_shape[2], "head_dim": cache_shape[4],
                         "max_len": cache_shape[3], "shape": cache_shape, "dtype": "float16",
                         "physical": "Core ML states k_cache/v_cache (MLState), written in place by each call"
                         if coreml["stateful"] else "whole cache in (k_cache, v_cache) and out (k_cache_out, ...)"},
            "tokenizer": "tokenizer.json",
            "quantization": {"method": variant, "weights_stored": chosen["weights_stored"],
                             "rope_tables": "float16, never compressed",
                             "variants": {v: {"bytes": r["bytes"], "top1_agreement": r["fidelity"]["top1_agreement"],
                                              "kl_mean": r["fidelity"]["kl_mean"],
                                              "greedy_tokens_matching": r["fidelity"]["greedy_tokens_matching"],
                                              "perplexity_change": r["fidelity"]["perplexity_change"],
                                              "weights_in_pytorch": r.get("weights_in_pytorch")}
                                          for v, r in coreml["variants"].items()},
                             "not_built": coreml.get("not_built", {})},
            "ops": {f["name"]: f["ops"] for f in info["functions"]},
            "fidelity": {**{k: chosen["fidelity"][k] for k in (
                "max_abs_diff", "top1_agreement", "kl_mean", "greedy_tokens_matching", "greedy_tokens",
                "positions_compared", "perplexity", "perplexity_reference", "perplexity_change")},
                **{k: chosen["fidelity"].get(k) for k in ("near_tie_share", "top1_agreement_outside_near_ties",
                                                           "top1_agreement_ci95")},
                "reference": "fp32 PyTorch student", "runtime": chosen["fidelity"]["runtime"]},
            "bench": {"value": None, "reason": f"{NOT_ON_LINUX}: run `edgedistil bench --target ios --bundle "
                                               f"dist/ios` on a Mac (macOS 15+)"},
            "teacher_bench": {"value": None, "reason": NOT_ON_LINUX},
            "speedup_vs_teacher": None,
            "quality": quality_entry(distill),
            "evaluation": evaluation_entry(records.get("eval")),
            "student": student_entry(distill),
        }
        write_json(tmp / "manifest.json", manifest)
    log(f"convert[ios]: {out_dir} ({sum(f['bytes'] for f in files) / 1e6:.1f} MB in {len(files)} files, {variant})")
    return manifest


def verify_package(bundle: Path, manifest: dict) -> list[dict]:
    """The bundle's package says what its manifest says (functions, I/O, states), and one decode step of it, run
    by the MIL reference, gives finite logits. Returns one entry per package for `edgedistil verify`."""
    from edgedistil.runtimes.coreml_mil_reference import MilReferenceLM

    runs = []
    for file in sorted({g["file"] for g in manifest["graphs"]}):
        path = Path(bundle) / file
        info = {f["name"]: f for f in inspect_package(path)["functions"]}
        for g in manifest["graphs"]:
            f = info.get(g["function"])
            if f is None or any(f[k] != g[k] for k in ("inputs", "outputs", "states")):
                raise EdgeError(f"{path}: function {g['function']} does not match the manifest's graph {g['name']}",
                                "copy the whole bundle again, or rebuild it")
        lm = MilReferenceLM(path)
        logits, _ = lm.step([0], 0, lm.empty_cache())
        if not np.isfinite(logits).all():
            raise EdgeError(f"{path} produced non-finite logits in the MIL reference", "rebuild the bundle")
        runs.append({"file": file, "runtime": "MIL reference (coremltools op implementations; not Core ML)",
                     "functions": sorted(info), "decode_step": "ok", "core_ml": f"not run: {NOT_ON_LINUX}"})
    return runs


def _tokens_per_call(function: dict, prefill_len: int) -> int | list[int]:
    ids = function["inputs"][0]
    if "enumerated_shapes" in ids:
        return [s[1] for s in ids["enumerated_shapes"]]
    return ids["shape"][1] if function["name"] != "main" else prefill_len


def usage(coreml: dict, variant: str, cache_shape: list, name: str) -> str:
    chosen = coreml["variants"][variant]
    logits = chosen["spec"]["functions"][0]["outputs"][0]
    vocab = logits["shape"][-1] if logits["shape"] else "V"
    fmt = dict(prefill=coreml["prefill_len"], max_len=coreml["max_len"], cache_shape=cache_shape, vocab=vocab)
    body = (STATEFUL_SWIFT if coreml["stateful"] else STATELESS_SWIFT).format(**fmt)
    return USAGE.format(name=f"{name}-student", size_mb=chosen["bytes"] / 1e6, variant=variant,
                        target=chosen["spec"]["deployment_target"], body=body, not_on_linux=NOT_ON_LINUX, **fmt)
