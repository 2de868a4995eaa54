"""LiteRT (ai-edge-litert, XNNPACK on the host CPU): a .tflite with `prefill` (T = P) and `decode` (T = 1) signatures.

Two bindings, both real LiteRT:
- `LiteRtLM` (the `Interpreter` API): a step function with the cache on the host, for fidelity. Each signature's
  tensors are allocated once; the stock `SignatureRunner.__call__` re-resizes and re-allocates on every call.
- `ResidentLoop` (the `CompiledModel` API with `TensorBuffer`s): the cache never leaves LiteRT's buffers. Each step
  reads the cache from one pair of buffers and writes it to the other (ping-pong), the way an app keeps its cache
  between calls, so a step costs one invoke plus writing two ints and reading the logits.

Names come from the file's signatures (`input_ids`, `position`, `k_cache`, `v_cache` -> `logits`, `k_cache_out`,
`v_cache_out`), never from positions: LiteRT lists them alphabetically.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from edgedistil.errors import EdgeError

INPUTS = ("input_ids", "position", "k_cache", "v_cache")
OUTPUTS = ("logits", "k_cache_out", "v_cache_out")
SIGNATURES = ("prefill", "decode")


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
    """The file's signatures are the ones the Android bundle promises: names, shapes, int32 ids, float32 cache."""
    def expect(what, got, want):
        if got != want:
            raise EdgeError(f"{path.name}: {what} is {got}, expected {want}",
                            "rebuild with `edgedistil build --target android --force convert`; report it if it persists")

    expect("the signatures", sorted(signatures), sorted(SIGNATURES))
    for sig, t in (("prefill", prefill_len), ("decode", 1)):
        ins = {d["name"]: (d["shape"], d["dtype"]) for d in signatures[sig]["inputs"]}
        outs = {d["name"]: (d["shape"], d["dtype"]) for d in signatures[sig]["outputs"]}
        expect(f"{sig} inputs", ins, {"input_ids": ([1, t], "int32"), "position": ([1], "int32"),
                                      "k_cache": (cache_shape, "float32"), "v_cache": (cache_shape, "float32")})
        expect(f"{sig} outputs", outs, {"logits": ([1, t, vocab], "float32"), "k_cache_out": (cache_shape, "float32"),
                                        "v_cache_out": (cache_shape, "float32")})


class LiteRtLM:
    """A step function over the `Interpreter` API: `step(ids, position, (k, v)) -> (logits [T, V], (k, v))`."""

    def __init__(self, path: Path | str, threads: int = 1):
        with quiet_stderr():  # the XNNPACK delegate announces itself when tensors are allocated
            self._load(path, threads)
        self.max_len = self.cache_shape[3]

    def _load(self, path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._wrapper = self.interpreter._interpreter  # the documented runner's own binding, minus its re-allocation
        self.signatures = {}
        for name in SIGNATURES:
            runner = self.interpreter.get_signature_runner(name)
            ins, outs = runner.get_input_details(), runner.get_output_details()
            subgraph = runner._subgraph_index
            self._wrapper.AllocateTensors(subgraph)
            self.signatures[name] = (subgraph, {k: d["index"] for k, d in ins.items()},
                                     {k: d["index"] for k, d in outs.items()})
            if name == "prefill":
                self.prefill_len = int(ins["input_ids"]["shape"][1])
                self.cache_shape = tuple(int(x) for x in ins["k_cache"]["shape"])

    def empty_cache(self):
        return np.zeros(self.cache_shape, np.float32), np.zeros(self.cache_shape, np.float32)

    def step(self, ids: list[int], position: int, cache):
        if len(ids) not in (1, self.prefill_len):
            raise EdgeError(f"LiteRT graphs take 1 or {self.prefill_len} tokens per call, got {len(ids)}",
                            "prefill in chunks of prefill_len (pad the last), then decode one token at a time")
        subgraph, ins, outs = self.signatures["decode" if len(ids) == 1 else "prefill"]
        w = self._wrapper
        w.SetTensor(ins["input_ids"], np.asarray([ids], np.int32), subgraph)
        w.SetTensor(ins["position"], np.asarray([position], np.int32), subgraph)
        w.SetTensor(ins["k_cache"], cache[0], subgraph)
        w.SetTensor(ins["v_cache"], cache[1], subgraph)
        w.Invoke(subgraph)
        return (w.GetTensor(outs["logits"], subgraph)[0],
                (w.GetTensor(outs["k_cache_out"], subgraph), w.GetTensor(outs["v_cache_out"], subgraph)))


class ResidentLoop:
    """Greedy generation over the `CompiledModel` API with the cache resident in LiteRT's tensor buffers."""

    def __init__(self, path: Path | str, threads: int = 1):
        from ai_edge_litert import options as litert_options
        from ai_edge_litert.compiled_model import CompiledModel

        opts = litert_options.Options.create()
        opts.cpu_options.num_threads = threads
        with quiet_stderr():
            self.model = CompiledModel.from_file(str(path), options=opts)
        self.vocab = {}
        self.buffers = {}
        for sig in SIGNATURES:
            details = self.model.get_input_tensor_details(sig)
            self.buffers[sig] = {
                "in": {n: self.model.create_input_buffer_by_name(sig, n) for n in details},
                "out": {n: self.model.create_output_buffer_by_name(sig, n) for n in self.model.get_output_tensor_details(sig)},
            }
            self.vocab[sig] = self.model.get_output_tensor_details(sig)["logits"]["shape"]
        details = self.model.get_input_tensor_details("prefill")
        self.prefill_len = int(details["input_ids"]["shape"][1])
        self.cache_shape = tuple(int(x) for x in details["k_cache"]["shape"])
        self.max_len = self.cache_shape[3]
        # two cache pairs: a step reads one and writes the other, then they swap
        self.caches = [(self.buffers["decode"]["in"]["k_cache"], self.buffers["decode"]["in"]["v_cache"]),
                       (self.buffers["decode"]["out"]["k_cache_out"], self.buffers["decode"]["out"]["v_cache_out"])]

    def _run(self, sig: str, ids: list[int], position: int, read: int) -> np.ndarray:
        b = self.buffers[sig]
        b["in"]["input_ids"].write(np.asarray([ids], np.int32))
        b["in"]["position"].write(np.asarray([position], np.int32))
        (k_in, v_in), (k_out, v_out) = self.caches[read], self.caches[1 - read]
        self.model.run_by_name(sig, {"input_ids": b["in"]["input_ids"], "position": b["in"]["position"],
                                     "k_cache": k_in, "v_cache": v_in},
                               {"logits": b["out"]["logits"], "k_cache_out": k_out, "v_cache_out": v_out})
        t, v = self.vocab[sig][1], self.vocab[sig][2]
        return b["out"]["logits"].read(t * v, np.float32).reshape(t, v)

    def reset(self) -> None:
        zeros = np.zeros(self.cache_shape, np.float32)
        for k, v in self.caches:
            k.write(zeros)
            v.write(zeros)

    def prefill(self, prompt: list[int], pad_id: int = 0) -> tuple[int, int]:
        """Chunked prefill from position 0 into an empty cache; returns (first new token, cache pair index)."""
        read, p = 0, self.prefill_len
        if -(-len(prompt) // p) * p > self.max_len:
            raise EdgeError(f"a {len(prompt)}-token prompt does not fit the {self.max_len}-position cache",
                            "use a shorter prompt")
        for i in range(0, len(prompt), p):
            piece = prompt[i:i + p]
            logits = self._run("prefill", piece + [pad_id] * (p - len(piece)), i, read)
            read = 1 - read
        return int(logits[len(piece) - 1].argmax()), read

    def decode(self, token: int, position: int, steps: int, read: int) -> tuple[list[int], int]:
        out = []
        for i in range(steps):
            token = int(self._run("decode", [token], position + i, read)[0].argmax())
            read = 1 - read
            out.append(token)
        return out, read

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        self.reset()
        first, read = self.prefill(prompt)
        rest, _ = self.decode(first, len(prompt), new_tokens - 1, read)
        return [first, *rest]
