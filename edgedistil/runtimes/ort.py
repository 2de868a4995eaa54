"""ONNX Runtime (CPU) as a step function over an exported edgedistil graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedistil.errors import EdgeError


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads steal the only other core on small CI machines; measured slower with it on 2 cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtLM:
    def __init__(self, path: Path | str, threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise EdgeError(f"ONNX model {path} does not exist", "run `edgedistil export` first, or check the path")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types for corrupt files
            raise EdgeError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}",
                            "the file is corrupt or not an edgedistil export; rerun `edgedistil export`")
        inputs = {i.name: i for i in self.session.get_inputs()}
        # two cache layouts: "full" (k_cache/v_cache [L,1,KV,S,D] in and out) and "gqa" (per-layer caches that
        # GroupQueryAttention updates in place, export/gqa.py)
        self.layout = "gqa" if "past_key_values.0.key" in inputs else "full"
        need = {"input_ids", "position"} | ({"k_cache", "v_cache"} if self.layout == "full" else set())
        missing = need - set(inputs)
        if missing:
            raise EdgeError(f"{path} lacks the inputs {sorted(missing)} of the edgedistil cache convention",
                            "export the model with `edgedistil export`")
        if self.layout == "full":
            self.cache_shape = tuple(inputs["k_cache"].shape)
            self.max_len = int(self.cache_shape[3])
        else:
            self.layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
            self.cache_shape = tuple(inputs["past_key_values.0.key"].shape)  # [1, KV, S, D] per layer
            self.max_len = int(self.cache_shape[2])
        self.path = path

    def empty_cache(self):
        if self.layout == "gqa":
            import onnxruntime as ort

            return [ort.OrtValue.ortvalue_from_numpy(np.zeros(self.cache_shape, np.float32))
                    for _ in range(2 * self.layers)]
        return np.zeros(self.cache_shape, np.float32), np.zeros(self.cache_shape, np.float32)

    def step_with_taps(self, ids: list[int], position: int, cache, taps: list[str] = ()):
        """One step, also returning the graph outputs named in `taps` (intermediate tensors a calibration pass
        exposed as outputs). In the gqa layout each past cache and its present output are bound to one OrtValue,
        so GroupQueryAttention writes the new rows in place and nothing else moves; the returned cache is the
        same (mutated) list."""
        ids_arr, pos_arr = np.asarray([ids], dtype=np.int32), np.asarray([position], dtype=np.int32)
        if self.layout == "full":
            k, v = cache
            logits, k, v, *tapped = self.session.run(["logits", "k_cache_out", "v_cache_out", *taps], {
                "input_ids": ids_arr, "position": pos_arr, "k_cache": k, "v_cache": v})
            return logits[0], (k, v), dict(zip(taps, tapped))
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids_arr)
        binding.bind_cpu_input("position", pos_arr)
        for name in ("logits", *taps):  # first: get_outputs() lists outputs in binding order
            binding.bind_output(name)
        for i in range(self.layers):
            for j, kind in enumerate(("key", "value")):
                buf = cache[2 * i + j]
                binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", buf)
                binding.bind_ortvalue_output(f"present.{i}.{kind}", buf)
        self.session.run_with_iobinding(binding)
        logits, *tapped = (o.numpy() for o in binding.get_outputs()[:1 + len(taps)])
        return logits[0], cache, dict(zip(taps, tapped))

    def step(self, ids: list[int], position: int, cache):
        logits, cache, _ = self.step_with_taps(ids, position, cache)
        return logits, cache
