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
        # three cache layouts: "full" (k_cache/v_cache [L,1,KV,S,D] in and out), "gqa" (per-layer caches that
        # GroupQueryAttention updates in place, export/gqa.py) and "hf" (the gqa graph with the Hugging Face
        # layout's attention_mask instead of position; run here with one max_len buffer per layer, in place)
        self.layout = ("hf" if "attention_mask" in inputs else "gqa") if "past_key_values.0.key" in inputs else "full"
        need = {"input_ids", "attention_mask" if self.layout == "hf" else "position"} | (
            {"k_cache", "v_cache"} if self.layout == "full" else set())
        missing = need - set(inputs)
        if missing:
            raise EdgeError(f"{path} lacks the inputs {sorted(missing)} of the edgedistil cache convention",
                            "export the model with `edgedistil export`")
        if self.layout == "full":
            self.cache_shape = tuple(inputs["k_cache"].shape)
            self.max_len = int(self.cache_shape[3])
        elif self.layout == "gqa":
            self.layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
            self.cache_shape = tuple(inputs["past_key_values.0.key"].shape)  # [1, KV, S, D] per layer
            self.max_len = int(self.cache_shape[2])
        else:
            self.layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
            meta = self.session.get_modelmeta().custom_metadata_map
            if "edgedistil.max_len" not in meta:
                raise EdgeError(f"{path} has no edgedistil.max_len metadata (the length its RoPE tables serve)",
                                "export the model with `edgedistil export`")
            self.max_len = int(meta["edgedistil.max_len"])
            _, kv_heads, _, head_dim = inputs["past_key_values.0.key"].shape
            self.cache_shape = (1, kv_heads, self.max_len, head_dim)
        self.path = path

    def empty_cache(self):
        if self.layout in ("gqa", "hf"):
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
        if self.layout == "hf":  # the mask's length says where the new tokens go: position + T in all
            binding.bind_cpu_input("input_ids", ids_arr.astype(np.int64))
            binding.bind_cpu_input("attention_mask", np.ones((1, position + len(ids)), np.int64))
        else:
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
