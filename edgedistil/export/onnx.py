"""The export stage: HF model folder -> model.onnx (prefill and decode in one graph) + verify.json + record.json.

One graph serves both prefill (T = P) and decode (T = 1): T is the only dynamic axis, and the weights are stored
once, which matters for a browser download. The cache layout is a recipe option
(`[export] cache`): "full" traces EdgeLM.step, with the static `[layers, 1, kv_heads, max_len, head_dim]` cache going
in and out whole every step (portable: the web bundle's); "gqa" builds the graph op by op around ONNX Runtime's
GroupQueryAttention with per-layer caches updated in place (export/gqa.py); "hf" is the same graph with the
Hugging Face ONNX layout's inputs (int64 `input_ids` and `attention_mask`, caches of any length), which
Transformers.js, onnxruntime-genai and Optimum load as it is (convert/hf_onnx.py).
"""

from __future__ import annotations

import collections
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.fidelity import floor_verdict, measure_fidelity
from edgedistil.model import EdgeLM, load_hf_folder
from edgedistil.quantize.precision import precision_report
from edgedistil.records import folder_fingerprint, sha256_file, versions
from edgedistil.runtimes.ort import OrtLM
from edgedistil.runtimes.torch_step import TorchLM

OPSET = 17
INPUTS = ["input_ids", "position", "k_cache", "v_cache"]
OUTPUTS = ["logits", "k_cache_out", "v_cache_out"]
CACHE_LAYOUTS = ("full", "gqa", "hf")


class _Step(torch.nn.Module):
    """torch.onnx.export traces `forward`; this makes EdgeLM.step the traced function."""

    def __init__(self, model: EdgeLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position, k_cache, v_cache):
        return self.model.step(input_ids, position, k_cache, v_cache)


def cache_layout(model: EdgeLM, max_len: int, cache: str = "full") -> dict:
    c = model.cfg
    common = {"layout": cache, "layers": c.num_hidden_layers, "kv_heads": c.num_key_value_heads,
              "head_dim": c.head_dim, "max_len": max_len, "dtype": "float32"}
    if cache == "hf":
        return {**common, "shape": ["batch_size", c.num_key_value_heads, "past_sequence_length", c.head_dim],
                "physical": "one tensor per layer: past_key_values.{i}.key|value in, present.{i}.key|value out "
                            "(past + new rows); or one max_len buffer per layer bound to both (onnxruntime-genai's "
                            "past_present_share_buffer), which GroupQueryAttention updates in place"}
    if cache == "gqa":
        return {**common, "shape": [1, c.num_key_value_heads, max_len, c.head_dim],
                "physical": "one tensor per layer: past_key_values.{i}.key|value in, present.{i}.key|value out; bind "
                            "each pair to one buffer (I/O binding) and GroupQueryAttention updates it in place"}
    return {**common, "shape": [c.num_hidden_layers, 1, c.num_key_value_heads, max_len, c.head_dim],
            "physical": "whole cache in (k_cache, v_cache) and out (k_cache_out, v_cache_out)"}


def graph_io(path: Path, prefill_len: int) -> list[dict]:
    """The prefill and decode views of the exported graph for the manifest, with every shape and dtype read back
    from one ONNX Runtime call at that token count (the graph's own output dims are mostly symbolic). A Hugging
    Face layout graph is called as its consumers first call it: batch 1, an empty past, an all-ones mask."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
              "tensor(float16)": np.float16}
    views = []
    for name, t in (("prefill", prefill_len), ("decode", 1)):
        dims = {"batch_size": 1, "past_sequence_length": 0}
        feed = {i.name: np.zeros([d if isinstance(d, int) else dims.get(d, t) for d in i.shape], dtypes[i.type])
                for i in session.get_inputs()}
        if "attention_mask" in feed:
            feed["attention_mask"] = np.ones_like(feed["attention_mask"])
        outs = session.run(None, feed)
        views.append({
            "name": name, "file": path.name, "tokens_per_call": t,
            "inputs": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feed.items()],
            "outputs": [{"name": o.name, "shape": list(v.shape), "dtype": str(v.dtype)}
                        for o, v in zip(session.get_outputs(), outs)],
        })
    return views


def op_histogram(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in m.graph.node).most_common())


def trace_full(model: EdgeLM, path: Path, max_len: int, prefill_len: int) -> None:
    """The "full" layout: EdgeLM.step traced by torch.onnx.export."""
    k, v = model.empty_cache(max_len)
    example = (torch.zeros(1, prefill_len, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), k, v)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            _Step(model), example, str(path), dynamo=False, opset_version=OPSET,
            input_names=INPUTS, output_names=OUTPUTS,
            dynamic_axes={"input_ids": {1: "T"}, "logits": {1: "T"}},
        )


def run_export(model_dir: Path, out_dir: Path, heldout_ids: np.ndarray, max_len: int, prefill_len: int,
               role: str, log=print, cache: str = "full") -> dict:
    """Export `model_dir` (student or teacher) to ONNX in the `cache` layout ("full" or "gqa"), check it with
    onnx.checker and ONNX Runtime, and measure its fidelity against the PyTorch model on held-out tokens."""
    import onnx

    from edgedistil.export.gqa import build_gqa_graph

    if cache not in CACHE_LAYOUTS:
        raise EdgeError(f"unknown cache layout '{cache}'", "use [export] cache = \"full\" or \"gqa\"")
    model = load_hf_folder(model_dir, max_len=max_len).eval()
    with atomic_dir(out_dir) as tmp:
        path = tmp / "model.onnx"
        t0 = time.perf_counter()
        if cache in ("gqa", "hf"):
            onnx.save(build_gqa_graph(model, max_len, io="hf" if cache == "hf" else "edgedistil"), str(path))
        else:
            trace_full(model, path, max_len, prefill_len)
        export_s = time.perf_counter() - t0
        proto = onnx.load(str(path))
        source = {"model_dir": str(model_dir), "fingerprint": folder_fingerprint(Path(model_dir))}
        meta = {"edgedistil.role": role, "edgedistil.cache_layout": str(cache_layout(model, max_len, cache)),
                "edgedistil.source_fingerprint": source["fingerprint"], "edgedistil.prefill_len": str(prefill_len)}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(path))
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as e:
            raise EdgeError(f"the exported graph fails onnx.checker: {str(e).splitlines()[0]}",
                            "report this model's config.json with the edgedistil version")

        log(f"export[{role}]: {path.stat().st_size / 1e6:.1f} MB ONNX in {export_s:.1f}s; checking against PyTorch")
        fidelity = measure_fidelity(TorchLM(model, max_len), OrtLM(path), heldout_ids, prefill_len)
        floors = floor_verdict(fidelity, "fp32")
        fidelity["meets_floors"] = floors["passed"]
        write_json(tmp / "verify.json", fidelity)
        record = {
            "stage": "export", "role": role, "source": source, "file": "model.onnx",
            "bytes": path.stat().st_size, "sha256": sha256_file(path), "opset": OPSET, "cache": cache,
            "export_seconds": round(export_s, 2), "ops": op_histogram(path), "graphs": graph_io(path, prefill_len),
            "kv_cache": cache_layout(model, max_len, cache), "fidelity": fidelity, "floors": floors,
            "precision": precision_report(path, "fp32", []),
            "checked_with": ["onnx.checker full_check", "onnxruntime CPU, graph optimization level ALL"],
            "versions": versions(),
        }
        write_json(tmp / "record.json", record)
    log(f"export[{role}]: max abs logit diff {fidelity['max_abs_diff']:.2e}, top-1 {fidelity['top1_agreement']:.3f}, "
        f"greedy {fidelity['greedy_tokens_matching']}/{fidelity['greedy_tokens']}")
    return record
