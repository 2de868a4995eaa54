"""LiteRT (ai-edge-litert, XNNPACK on the host CPU): a .tflite in LiteRT-LM's calling convention.

The file has two signatures, `prefill_<P>` (T = P) and `decode` (T = 1), with LiteRT-LM's names: `tokens` int32
[1, T], `input_pos` int32 [T], and per layer `kv_cache_k_<i>`, `kv_cache_v_<i>` float32 [1, kv_heads, C, head_dim]
in and out under the same names (LiteRT-LM reads the context length C from dimension 2 of K), plus `logits` float32
[1, T, V]. The same file is the one packed into the .litertlm, so our interpreter and LiteRT-LM read one graph.

Two bindings, both real LiteRT:
- `LiteRtLM` (the `Interpreter` API): a step function with the cache on the host, for fidelity. Each signature's
  tensors are allocated once; the stock `SignatureRunner.__call__` re-resizes and re-allocates on every call.
- `ResidentLoop` (the `CompiledModel` API with `TensorBuffer`s): the cache never leaves LiteRT's buffers. Each step
  reads the cache from one set of buffers and writes it to the other (ping-pong), the way an app keeps its cache
  between calls, so a step costs one invoke plus writing the inputs and reading the logits.

Names come from the file's signatures, never from positions: LiteRT lists them alphabetically.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

from edgedistil.errors import EdgeError

DECODE = "decode"
CACHE_NAME = re.compile(r"kv_cache_[kv]_(\d+)$")


def prefill_signature(prefill_len: int) -> str:
    return f"prefill_{prefill_len}"


def cache_names(layers: int) -> list[str]:
    return [f"kv_cache_{kind}_{i}" for i in range(layers) for kind in ("k", "v")]


@contextlib.contextmanager
def quiet_stderr():
    """LiteRT's C++ side prints INFO/WARNING lines (XNNPACK delegate, absent NPU plugins) straight to fd 2."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def read_signatures(path: Path | str) -> dict:
    """Each signature's inputs and outputs (name, shape, dtype) as the saved file declares them."""
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"LiteRT model {path} does not exist", "build it with `edgedistil build --target android`")
    try:
        with quiet_stderr():
            it = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as e:
        raise EdgeError(f"{path} is not a loadable .tflite ({str(e).splitlines()[0][:120]})",
                        "rebuild it with `edgedistil build --target android --force convert`") from None
    out = {}
    for name in it.get_signature_list():
        runner = it.get_signature_runner(name)
        out[name] = {side: [{"name": k, "shape": [int(x) for x in d["shape"]], "dtype": _dtype_name(d["dtype"])}
                            for k, d in sorted(details.items(), key=lambda kv: kv[1]["index"])]
                     for side, details in (("inputs", runner.get_input_details()),
                                           ("outputs", runner.get_output_details()))}
    return out


def check_signatures(path: Path, signatures: dict, prefill_len: int, cache_shape: list[int], vocab: int) -> None:
    """The file's signatures are LiteRT-LM's: `prefill_<P>` and `decode`, `tokens`/`input_pos` int32, one float32
    cache tensor per layer (`cache_shape` = [layers, 1, kv_heads, C, head_dim]) in and out, 3-D `logits`."""
    def expect(what, got, want):
        if got != want:
            raise EdgeError(f"{path.name}: {what} is {got}, expected {want}",
                            "rebuild with `edgedistil build --target android --force convert`; report it if it persists")

    prefill = prefill_signature(prefill_len)
    expect("the signatures", sorted(signatures), sorted([prefill, DECODE]))
    layer_shape = [1, *cache_shape[2:]]
    caches = {n: (layer_shape, "float32") for n in cache_names(cache_shape[0])}
    for sig, t in ((prefill, prefill_len), (DECODE, 1)):
        ins = {d["name"]: (d["shape"], d["dtype"]) for d in signatures[sig]["inputs"]}
        outs = {d["name"]: (d["shape"], d["dtype"]) for d in signatures[sig]["outputs"]}
        expect(f"{sig} inputs", ins, {"tokens": ([1, t], "int32"), "input_pos": ([t], "int32"), **caches})
        expect(f"{sig} outputs", outs, {"logits": ([1, t, vocab], "float32"), **caches})


def _layout(signature_names, input_details) -> tuple[str, int, list[str], tuple[int, ...]]:
    """(prefill signature, prefill length, cache tensor names, one layer's cache shape) from a file's signatures."""
    prefill = [n for n in signature_names if n.startswith("prefill")]
    if len(prefill) != 1 or DECODE not in signature_names:
        raise EdgeError(f"a LiteRT-LM model needs one prefill_<P> and one decode signature, found {sorted(signature_names)}",
                        "rebuild it with `edgedistil build --target android --force convert`")
    details = input_details(prefill[0])
    names = sorted((n for n in details if CACHE_NAME.match(n)), key=lambda n: (int(CACHE_NAME.match(n)[1]), n))
    shape = tuple(int(x) for x in details[names[0]]["shape"])
    return prefill[0], int(details["tokens"]["shape"][1]), names, shape


class LiteRtLM:
    """A step function over the `Interpreter` API: `step(ids, position, cache) -> (logits [T, V], cache)`, where the
    cache is a dict of the per-layer cache arrays."""

    def __init__(self, path: Path | str, threads: int = 1):
        with quiet_stderr():  # the XNNPACK delegate announces itself when tensors are allocated
            self._load(path, threads)
        self.max_len = self.layer_shape[2]

    def _load(self, path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._wrapper = self.interpreter._interpreter  # the documented runner's own binding, minus its re-allocation
        sigs = self.interpreter.get_signature_list()
        self.prefill_name, self.prefill_len, self.cache_names, self.layer_shape = _layout(
            sigs, lambda name: self.interpreter.get_signature_runner(name).get_input_details())
        self.signatures = {}
        for name in (self.prefill_name, DECODE):
            runner = self.interpreter.get_signature_runner(name)
            ins, outs = runner.get_input_details(), runner.get_output_details()
            subgraph = runner._subgraph_index
            self._wrapper.AllocateTensors(subgraph)
            self.signatures[name] = (subgraph, {k: d["index"] for k, d in ins.items()},
                                     {k: d["index"] for k, d in outs.items()})

    def empty_cache(self) -> dict:
        return {n: np.zeros(self.layer_shape, np.float32) for n in self.cache_names}

    def step(self, ids: list[int], position: int, cache: dict):
        if len(ids) not in (1, self.prefill_len):
            raise EdgeError(f"LiteRT graphs take 1 or {self.prefill_len} tokens per call, got {len(ids)}",
                            "prefill in chunks of prefill_len (pad the last), then decode one token at a time")
        subgraph, ins, outs = self.signatures[DECODE if len(ids) == 1 else self.prefill_name]
        w = self._wrapper
        w.SetTensor(ins["tokens"], np.asarray([ids], np.int32), subgraph)
        w.SetTensor(ins["input_pos"], np.arange(position, position + len(ids), dtype=np.int32), subgraph)
        for n in self.cache_names:
            w.SetTensor(ins[n], cache[n], subgraph)
        w.Invoke(subgraph)
        return w.GetTensor(outs["logits"], subgraph)[0], {n: w.GetTensor(outs[n], subgraph) for n in self.cache_names}


class ResidentLoop:
    """Greedy generation over the `CompiledModel` API with the cache resident in LiteRT's tensor buffers."""

    def __init__(self, path: Path | str, threads: int = 1):
        from ai_edge_litert import options as litert_options
        from ai_edge_litert.compiled_model import CompiledModel

        opts = litert_options.Options.create()
        opts.cpu_options.num_threads = threads
        with quiet_stderr():
            self.model = CompiledModel.from_file(str(path), options=opts)
        sigs = list(self.model.get_signature_list())
        self.prefill_name, self.prefill_len, self.cache_names, self.layer_shape = _layout(
            sigs, self.model.get_input_tensor_details)
        self.max_len = self.layer_shape[2]
        self.vocab = {}
        self.buffers = {}
        for sig in (self.prefill_name, DECODE):
            self.buffers[sig] = {n: self.model.create_input_buffer_by_name(sig, n) for n in ("tokens", "input_pos")}
            self.buffers[sig]["logits"] = self.model.create_output_buffer_by_name(sig, "logits")
            self.vocab[sig] = self.model.get_output_tensor_details(sig)["logits"]["shape"]
        # two cache sets: a step reads one and writes the other, then they swap
        self.caches = [{n: self.model.create_input_buffer_by_name(DECODE, n) for n in self.cache_names},
                       {n: self.model.create_output_buffer_by_name(DECODE, n) for n in self.cache_names}]

    def _run(self, sig: str, ids: list[int], position: int, read: int) -> np.ndarray:
        b = self.buffers[sig]
        b["tokens"].write(np.asarray([ids], np.int32))
        b["input_pos"].write(np.arange(position, position + len(ids), dtype=np.int32))
        self.model.run_by_name(sig, {"tokens": b["tokens"], "input_pos": b["input_pos"], **self.caches[read]},
                               {"logits": b["logits"], **self.caches[1 - read]})
        t, v = self.vocab[sig][1], self.vocab[sig][2]
        return b["logits"].read(t * v, np.float32).reshape(t, v)

    def reset(self) -> None:
        zeros = np.zeros(self.layer_shape, np.float32)
        for buffers in self.caches:
            for b in buffers.values():
                b.write(zeros)

    def prefill(self, prompt: list[int], pad_id: int = 0) -> tuple[int, int]:
        """Chunked prefill from position 0 into an empty cache; returns (first new token, cache set index)."""
        read, p = 0, self.prefill_len
        if -(-len(prompt) // p) * p > self.max_len:
            raise EdgeError(f"a {len(prompt)}-token prompt does not fit the {self.max_len}-position cache",
                            "use a shorter prompt")
        for i in range(0, len(prompt), p):
            piece = prompt[i:i + p]
            logits = self._run(self.prefill_name, piece + [pad_id] * (p - len(piece)), i, read)
            read = 1 - read
        return int(logits[len(piece) - 1].argmax()), read

    def decode(self, token: int, position: int, steps: int, read: int) -> tuple[list[int], int]:
        out = []
        for i in range(steps):
            token = int(self._run(DECODE, [token], position + i, read)[0].argmax())
            read = 1 - read
            out.append(token)
        return out, read

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        self.reset()
        first, read = self.prefill(prompt)
        rest, _ = self.decode(first, len(prompt), new_tokens - 1, read)
        return [first, *rest]
