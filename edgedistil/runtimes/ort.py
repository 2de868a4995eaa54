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
        missing = {"input_ids", "position", "k_cache", "v_cache"} - set(inputs)
        if missing:
            raise EdgeError(f"{path} lacks the inputs {sorted(missing)} of the edgedistil cache convention",
                            "export the model with `edgedistil export`")
        self.cache_shape = tuple(inputs["k_cache"].shape)
        self.max_len = int(self.cache_shape[3])
        self.path = path

    def empty_cache(self):
        return np.zeros(self.cache_shape, np.float32), np.zeros(self.cache_shape, np.float32)

    def step(self, ids: list[int], position: int, cache):
        k, v = cache
        logits, k, v = self.session.run(["logits", "k_cache_out", "v_cache_out"], {
            "input_ids": np.asarray([ids], dtype=np.int32),
            "position": np.asarray([position], dtype=np.int32),
            "k_cache": k, "v_cache": v,
        })
        return logits[0], (k, v)
