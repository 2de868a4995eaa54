"""Reference evaluation of a saved Core ML ML Program, on Linux, with coremltools' own op implementations.

This is a verification tool, not a runtime, and it makes no speed claims. Core ML itself only runs on Apple
platforms; on Linux, coremltools can still read a saved .mlpackage back into its Python MIL IR (the IR its
converter emits). This module runs that program op by op: every op through coremltools' numpy `value_inference`,
except the few listed in `_OWN_OPS`, and compressed weights (constexpr_* ops) dequantized by coremltools'
`materialized_val_inference`. What it checks is the program as saved: graph wiring, dynamic slice indices, state
reads and writes, fp16 casts, and the dequantized weights. What it does not check is how Core ML's CPU, GPU and
Neural Engine kernels round: those numbers come from `edgedistil bench --target ios` on a Mac.

An op with no reference implementation is reported by name (`unsupported_ops`) and refused before running.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgedistil.errors import EdgeError


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _as_fp32_product(a, b):
    # numpy's float16 matmul has no BLAS path (about 80x slower than fp32 here), and the MIL spec does not fix an
    # accumulation precision: multiply fp16 values with fp32 accumulation, then round to the op's fp16 type below.
    return np.matmul(a.astype(np.float32, copy=False), b.astype(np.float32, copy=False))


def _fp32_weight(var, env, weights: dict):
    """A weight's value in fp32, converted once per function: converting every matrix again on every call took
    60% of a decode step."""
    if var.op is None or not (var.op.op_type == "const" or var.op.op_type.startswith("constexpr_")):
        return env[var]
    if var not in weights:
        weights[var] = np.asarray(env[var], dtype=np.float32)
    return weights[var]


def _linear(op, env, weights):
    x, w = env[op.x], _fp32_weight(op.weight, env, weights)
    y = _as_fp32_product(x, np.swapaxes(w, -1, -2))
    return y + env[op.bias].astype(np.float32) if op.bias is not None else y


def _matmul(op, env, weights):
    x, y = _fp32_weight(op.x, env, weights), _fp32_weight(op.y, env, weights)
    if op.transpose_x.val:
        x = np.swapaxes(x, -1, -2)
    if op.transpose_y.val:
        y = np.swapaxes(y, -1, -2)
    return _as_fp32_product(x, y)


def _silu(op, env, weights):
    x = env[op.x]
    return x.astype(np.float32) * _sigmoid(x.astype(np.float32))


def _select(op, env, weights):
    # coremltools' value_inference assumes a scalar result when a and b are scalars; broadcast as the spec says
    return np.where(env[op.cond], env[op.a], env[op.b])


def _shape(op, env, weights):
    return np.array(env[op.x].shape, dtype=np.int32)


def _scatter(op, env, weights):
    # coremltools has no value_inference for scatter; MIL: output[.., indices[i], ..] = updates[.., i, ..] on axis
    data, indices, updates = env[op.data].copy(), env[op.indices], env[op.updates]
    mode = op.mode.val if op.mode is not None else "update"
    if indices.ndim != 1 or mode != "update":
        raise EdgeError(f"the MIL reference implements scatter for 1-D indices in mode 'update' only, not "
                        f"{indices.ndim}-D in mode {mode!r} ({op.name})", "run this package on a Mac")
    where = [slice(None)] * data.ndim
    where[op.axis.val] = indices % data.shape[op.axis.val]  # negative indices count from the end
    data[tuple(where)] = updates
    return data


# op type -> (op, env, fp32 weights) -> value, for ops coremltools cannot evaluate on runtime values (or only slowly)
_OWN_OPS = {"linear": _linear, "matmul": _matmul, "silu": _silu, "select": _select, "shape": _shape,
            "scatter": _scatter}
_STATE_OPS = ("read_state", "coreml_update_state")


def quiet_coremltools() -> None:
    """coremltools logs at import that its macOS-only runtime is missing and that torch 2.13 is untested, and the
    torchao it imports (a litert-torch dependency) that its CUDA kernels do not load; all expected on a CPU-only
    Linux machine, and repeated they would bury the build log."""
    for name in ("coremltools", "torchao", "torch.utils._pytree"):  # the last: torchao registering an Enum
        logging.getLogger(name).setLevel(logging.ERROR)


def load_program(package: Path):
    """The saved package as (MLModel without a runtime, spec, pymil Program)."""
    quiet_coremltools()
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    package = Path(package)
    if not (package / "Manifest.json").is_file():
        raise EdgeError(f"{package} is not an .mlpackage (no Manifest.json)", "pass the package folder itself")
    try:
        ml = ct.models.MLModel(str(package), skip_model_load=True)
        spec = ml.get_spec()
        program = milproto_load(spec, spec.specificationVersion, file_weights_dir=ml.weights_dir)
    except Exception as e:  # protobuf and MIL loader errors have many types; all mean an unreadable package
        raise EdgeError(f"coremltools cannot read {package}: {str(e).splitlines()[0][:200]}",
                        "the package is corrupt or not an ML Program; rebuild it with `edgedistil build --target ios`")
    return ml, spec, program


def _has_reference(op) -> bool:
    from coremltools.converters.mil.mil.operation import Operation

    t = op.op_type
    if t == "const" or t in _OWN_OPS or t in _STATE_OPS:
        return True
    if t.startswith("constexpr_"):
        return hasattr(op, "materialized_val_inference")
    return type(op).value_inference is not Operation.value_inference


def _bind(var, val):
    """Give `var` its runtime value, re-typed to the value's concrete shape so value_inference can read it."""
    from coremltools.converters.mil.mil import types

    if isinstance(val, np.ndarray) and (types.is_tensor(var.sym_type) or val.ndim > 0):
        var._sym_type = types.tensor(var.dtype, tuple(val.shape))
    elif isinstance(val, np.ndarray):  # a 0-d array for a scalar var: its numpy scalar binds without a warning
        val = val[()]
    builtin = var.sym_type()
    builtin.val = val
    var._sym_val = builtin


def _np_dtype(var):
    from coremltools.converters.mil.mil import types

    try:
        return types.nptype_from_builtin(var.dtype)
    except Exception:  # non-tensor vars (states, lists) have no numpy dtype
        return None


class MilFunction:
    """One function of the program (`main`, or `prefill`/`decode` of a multifunction package)."""

    def __init__(self, function, output_names: list[str]):
        from coremltools.converters.mil.mil import types

        self.fn = function
        self.output_names = output_names
        self.state_names = [n for n, v in function.inputs.items() if types.is_state(v.sym_type)]
        self.input_names = [n for n in function.inputs if n not in self.state_names]
        self._dequantized: dict[str, list] = {}
        self._fp32_weights: dict = {}
        self._dtypes: dict = {}
        self._unsupported = sorted({op.op_type for op in function.operations if not _has_reference(op)})

    def unsupported_ops(self) -> list[str]:
        return self._unsupported

    def state_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        from coremltools.converters.mil.mil import types

        out = {}
        for n in self.state_names:
            wrapped = self.fn.inputs[n].sym_type.wrapped_type()
            out[n] = (tuple(wrapped.get_shape()), types.nptype_from_builtin(wrapped.get_primitive()))
        return out

    def run(self, inputs: dict[str, np.ndarray], state: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; `state` (name -> array) is updated in place, as Core ML's MLState is."""
        missing = self.unsupported_ops()
        if missing:
            raise EdgeError(f"the MIL reference has no implementation of op(s) {', '.join(missing)}",
                            "this package cannot be checked on Linux; run it on a Mac with `edgedistil bench`")
        state = state if state is not None else {}
        env, state_of = {}, {}
        for name, var in self.fn.inputs.items():
            if name in self.state_names:
                env[var], state_of[var] = state[name], name
            else:
                env[var] = np.asarray(inputs[name]).astype(_np_dtype(var))
        for op in self.fn.operations:
            values = self._evaluate(op, env, state, state_of)
            if op.op_type == "const":  # keep strings and scalars as MIL typed them
                env[op.outputs[0]] = values[0]
                continue
            for var, val in zip(op.outputs, values):
                if var not in self._dtypes:
                    self._dtypes[var] = _np_dtype(var)
                dtype = self._dtypes[var]
                val = np.asarray(val)
                env[var] = val.astype(dtype) if dtype is not None and val.dtype != dtype else val
        return {name: env[var] for name, var in zip(self.output_names, self.fn.outputs)}

    def _evaluate(self, op, env, state, state_of) -> list:
        t = op.op_type
        if t == "const":
            val = op.outputs[0].val
            if isinstance(val, np.bool_) or (isinstance(val, np.ndarray) and val.ndim == 0 and val.dtype == bool):
                val = bool(val)  # milproto loads scalar bools as np.bool_, which numpy's keepdims= rejects
                _bind(op.outputs[0], val)
            return [val]
        if t.startswith("constexpr_"):  # compressed weights: dequantize once per function
            if op.name not in self._dequantized:
                r = op.outputs[0].val if op.outputs[0].val is not None else op.materialized_val_inference()
                self._dequantized[op.name] = list(r) if isinstance(r, tuple) else [r]
            return self._dequantized[op.name]
        if t == "read_state":  # a copy: the state is updated in place later, as MLState is
            return [env[op.input].copy()]
        if t == "coreml_update_state":
            name = state_of[op.state]
            state[name][...] = env[op.value].astype(state[name].dtype)
            return [state[name]]
        if t in _OWN_OPS:
            return [_OWN_OPS[t](op, env, self._fp32_weights)]
        for var in op.get_flattened_inputs():
            if var in env and var not in state_of and (var.op is None or var.op.op_type != "const"):
                _bind(var, env[var])  # consts already carry their value
        r = op.value_inference()
        values = list(r) if isinstance(r, (tuple, list)) and len(op.outputs) > 1 else [r]
        if any(v is None for v in values):
            raise EdgeError(f"the MIL reference got no value for op {t} ({op.name})",
                            "this package cannot be checked on Linux; run it on a Mac with `edgedistil bench`")
        return values


class MilReference:
    """A saved .mlpackage: its functions by name, each runnable with `MilFunction.run`."""

    def __init__(self, package: Path | str):
        self.package = Path(package)
        self.ml, self.spec, self.program = load_program(self.package)
        described = list(self.spec.description.functions) or [self.spec.description]
        names = [d.name for d in self.spec.description.functions] or ["main"]
        self.functions = {n: MilFunction(self.program.functions[n], [o.name for o in d.output])
                          for n, d in zip(names, described)}

    def unsupported_ops(self) -> list[str]:
        return sorted({t for f in self.functions.values() for t in f.unsupported_ops()})


class MilReferenceLM:
    """A converted edgedistil package as a step function (edgedistil.decoding), for edgedistil.fidelity.

    Stateful packages have `prefill` (T = P) and `decode` (T = 1) sharing one state; a stateless package has one
    `main` function taking and returning the cache. The cache object is the state dict or the (k, v) pair.
    """

    def __init__(self, package: Path | str):
        self.ref = MilReference(package)
        fns = self.ref.functions
        self.stateful = "decode" in fns
        if self.stateful:
            self._by_tokens = {int(fns["prefill"].fn.inputs["input_ids"].shape[1]): fns["prefill"], 1: fns["decode"]}
            shape, _ = fns["decode"].state_shapes()["k_cache"]
        else:
            main = fns["main"]
            self._by_tokens = None
            shape = tuple(main.fn.inputs["k_cache"].shape)
        self.cache_shape = shape
        self.max_len = int(shape[3])

    def empty_cache(self):
        z = lambda: np.zeros(self.cache_shape, np.float16)  # noqa: E731 - Core ML states and caches are fp16
        return {"k_cache": z(), "v_cache": z()} if self.stateful else (z(), z())

    def step(self, ids: list[int], position: int, cache):
        feed = {"input_ids": np.asarray([ids], np.int32), "position": np.asarray([position], np.int32)}
        if self.stateful:
            fn = self._by_tokens.get(len(ids))
            if fn is None:
                raise EdgeError(f"the package has no function for {len(ids)} tokens per call "
                                f"(it has {sorted(self._by_tokens)})", "prefill in chunks of the package's length")
            out = fn.run(feed, cache)
            return out["logits"][0].astype(np.float32), cache
        k, v = cache
        out = self.ref.functions["main"].run({**feed, "k_cache": k, "v_cache": v})
        return out["logits"][0].astype(np.float32), (out["k_cache_out"], out["v_cache_out"])
