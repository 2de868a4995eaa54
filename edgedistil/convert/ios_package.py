"""Reading a saved Core ML package back, with no Core ML runtime: its spec (functions, I/O, states, op histogram,
deployment target), each weight's stored precision and block, the float type each op computes in, and the
dequantized weights measured inside the PyTorch model. What convert/ios.py writes is checked with these."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from edgedistil.errors import EdgeError
from edgedistil.fidelity import measure_fidelity
from edgedistil.model import EdgeLM
from edgedistil.runtimes.coreml_mil_reference import quiet_coremltools
from edgedistil.runtimes.torch_step import TorchLM

if TYPE_CHECKING:
    from edgedistil.convert.ios import IosOptions

SPEC_DTYPES = {65552: "float16", 65568: "float32", 131104: "int32", 65600: "float64"}
# MLModel specificationVersion -> the deployment target it needs
SPEC_TARGETS = {7: "iOS16", 8: "iOS17", 9: "iOS18"}


def _feature(f) -> dict:
    kind = f.type.WhichOneof("Type")
    if kind == "stateType":
        a = f.type.stateType.arrayType
        return {"name": f.name, "shape": list(a.shape), "dtype": SPEC_DTYPES.get(a.dataType, str(a.dataType))}
    a = f.type.multiArrayType
    entry = {"name": f.name, "shape": list(a.shape), "dtype": SPEC_DTYPES.get(a.dataType, str(a.dataType))}
    if a.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
        entry["enumerated_shapes"] = [list(s.shape) for s in a.enumeratedShapes.shapes]
    return entry


def _histogram(block, counter) -> None:
    for op in block.operations:
        counter[op.type] += 1
        for b in op.blocks:
            _histogram(b, counter)


def inspect_package(path: Path) -> dict:
    """What the saved package says about itself, read with skip_model_load=True (no Core ML runtime needed)."""
    quiet_coremltools()
    import coremltools as ct

    ml = ct.models.MLModel(str(path), skip_model_load=True)
    spec = ml.get_spec()
    d = spec.description
    described = list(d.functions) or [d]
    names = [f.name for f in d.functions] or ["main"]
    functions = []
    for name, desc in zip(names, described):
        ops = collections.Counter()
        for block in spec.mlProgram.functions[name].block_specializations.values():
            _histogram(block, ops)
        functions.append({"name": name, "inputs": [_feature(f) for f in desc.input],
                          "outputs": [_feature(f) for f in desc.output],
                          "states": [_feature(f) for f in desc.state],
                          "opset": list(spec.mlProgram.functions[name].block_specializations)[0],
                          "ops": dict(ops.most_common())})
    return {"specification_version": spec.specificationVersion,
            "deployment_target": SPEC_TARGETS.get(spec.specificationVersion, f"spec {spec.specificationVersion}"),
            "default_function": d.defaultFunctionName or "main", "functions": functions}


def check_spec(info: dict, model: EdgeLM, options: IosOptions) -> None:
    """The package's functions, I/O, states, shapes and dtypes are the ones this converter promises."""
    c = model.cfg
    cache = [c.num_hidden_layers, 1, c.num_key_value_heads, options.max_len, c.head_dim]
    fns = {f["name"]: f for f in info["functions"]}

    def expect(what, got, want):
        if got != want:
            raise EdgeError(f"the saved Core ML package has {what} {got}, expected {want}",
                            "rebuild with `edgedistil build --target ios --force convert`; report it if it persists")

    if options.min_ios >= 18:
        expect("functions", sorted(fns), ["decode", "prefill"])
        expect("deployment target", info["deployment_target"], "iOS18")
        for name, t in (("prefill", options.prefill_len), ("decode", 1)):
            f = fns[name]
            expect(f"{name} inputs", [(i["name"], i["shape"], i["dtype"]) for i in f["inputs"]],
                   [("input_ids", [1, t], "int32"), ("position", [1], "int32")])
            expect(f"{name} states", [(s["name"], s["shape"], s["dtype"]) for s in f["states"]],
                   [("k_cache", cache, "float16"), ("v_cache", cache, "float16")])
            expect(f"{name} outputs", [(o["name"], o["dtype"]) for o in f["outputs"]], [("logits", "float16")])
    else:
        expect("functions", sorted(fns), ["main"])
        f = fns["main"]
        expect("inputs", [(i["name"], i["dtype"]) for i in f["inputs"]],
               [("input_ids", "int32"), ("position", "int32"), ("k_cache", "float16"), ("v_cache", "float16")])
        expect("input_ids shapes", sorted(f["inputs"][0].get("enumerated_shapes", [])),
               [[1, 1], [1, options.prefill_len]])
        expect("cache shape", f["inputs"][2]["shape"], cache)
        expect("outputs", [o["name"] for o in f["outputs"]], ["logits", "k_cache_out", "v_cache_out"])


def weight_precisions(path: Path) -> list[dict]:
    """Each weight (const or compressed constexpr with a matrix or table) as stored in the saved package."""
    from coremltools.converters.mil.mil import types

    from edgedistil.runtimes.coreml_mil_reference import load_program

    _, _, program = load_program(path)
    fn = next(iter(program.functions.values()))  # multifunction packages share one weight file
    parts = {v.name for op in fn.operations if op.op_type.startswith("constexpr_") for v in op.inputs.values()}
    out = []
    for op in fn.operations:
        if op.op_type == "const" and op.outputs[0].name not in parts:  # not a compressed weight's data or scale
            val = op.outputs[0].val
            if isinstance(val, np.ndarray) and val.ndim >= 2 and val.dtype.kind == "f":
                out.append({"name": op.name, "shape": list(val.shape), "stored": str(val.dtype), "op": "const"})
        elif op.op_type.startswith("constexpr_"):
            stored = {"constexpr_blockwise_shift_scale": "data", "constexpr_lut_to_dense": "indices"}.get(op.op_type)
            var = getattr(op, stored) if stored else op.inputs[next(iter(op.inputs))]
            entry = {"name": op.name, "shape": list(op.outputs[0].shape), "op": op.op_type,
                     "stored": types.builtin_to_string(var.dtype)}
            scale = op.inputs.get("scale")
            if op.op_type == "constexpr_blockwise_shift_scale" and len(scale.shape) == len(var.shape):
                # one scale per block of the input axis (per channel: one block as wide as the input)
                entry["block"] = int(var.shape[-1] // scale.shape[-1])
            out.append(entry)
    return out


def compute_dtypes(path: Path) -> dict[str, dict[str, int]]:
    """How many ops of each type compute in each float type, in the saved package's first function (the cache
    states are fp16 storage, not compute, and are left out)."""
    from coremltools.converters.mil.mil import types

    from edgedistil.runtimes.coreml_mil_reference import load_program

    _, _, program = load_program(path)
    out: dict[str, collections.Counter] = {}
    for op in next(iter(program.functions.values())).operations:
        if op.op_type in ("const", "cast", "read_state", "coreml_update_state") or op.op_type.startswith("constexpr_"):
            continue
        dtype = op.outputs[0].dtype
        if dtype in (types.fp16, types.fp32):
            out.setdefault(types.builtin_to_string(dtype), collections.Counter())[op.op_type] += 1
    return {k: dict(v.most_common()) for k, v in sorted(out.items())}


def stored_weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight matrix of the saved package as Core ML will use it (compressed ones dequantized by coremltools'
    own constexpr implementation), keyed by its PyTorch name with dots as underscores."""
    from edgedistil.runtimes.coreml_mil_reference import load_program

    _, _, program = load_program(path)
    fn = next(iter(program.functions.values()))  # the functions share one weight file
    out = {}
    for op in fn.operations:
        if op.op_type.startswith("constexpr_"):
            value = op.materialized_val_inference()
        elif op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.ndim == 2:
            value = op.outputs[0].val
        else:
            continue
        # "model_model_layers_0_mlp_up_proj_weight_to_fp16_quantized": the wrapper's `model.` + the HF name
        name = op.name.removeprefix("model_").split("_to_fp16")[0]
        out[name] = np.asarray(value, dtype=np.float32)
    return out


def weights_in_pytorch(model: EdgeLM, path: Path, heldout_ids: np.ndarray, options: "IosOptions") -> dict:
    """The package's weights, dequantized, loaded back into the PyTorch model and measured against the fp32 model:
    what the compression alone costs, apart from any runtime's arithmetic."""
    import copy

    stored = stored_weights(path)
    clone = copy.deepcopy(model)
    loaded = []
    with torch.no_grad():
        for name, param in clone.named_parameters():
            value = stored.get(name.replace(".", "_"))
            if value is not None and tuple(value.shape) == tuple(param.shape):
                param.copy_(torch.from_numpy(value))
                loaded.append(name)
    matrices = [n for n, p in clone.named_parameters() if p.ndim == 2]
    missing = sorted(set(matrices) - set(loaded))
    if missing:
        raise EdgeError(f"{path}: no stored weight matches PyTorch's {missing[0]} ({len(missing)} unmatched)",
                        "report this model's config.json; the package's weight names were not the expected ones")
    f = measure_fidelity(TorchLM(model, options.max_len), TorchLM(clone, options.max_len), heldout_ids,
                         options.prefill_len, segments=options.fidelity_segments, greedy_tokens=options.greedy_tokens)
    return {"weights_loaded": len(loaded), "runtime": "PyTorch fp32 with the package's dequantized weights",
            **{k: f[k] for k in ("top1_agreement", "kl_mean", "perplexity", "perplexity_reference",
                                 "perplexity_change", "greedy_tokens_matching", "greedy_tokens")}}


def package_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
