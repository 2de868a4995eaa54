"""Optimum's `ORTModelForCausalLM` on a Hugging Face ONNX folder, as a developer loads it. Standalone on purpose
(standard library + optimum-onnx + transformers 4.57, which clash with the project's): run by the Optimum venv's
Python, by path, never imported by edgedistil:

    OPTIMUM_PYTHON optimum_worker.py FOLDER JOB_JSON

JOB_JSON: {"files": ["model.onnx", ...] (under FOLDER/onnx/), "prompt": [ids], "new_tokens": N}. Prints one JSON
line: per file the greedy ids Optimum's own generate() returns after the prompt, or the error it raised.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: nothing from the Hub


def generate_ids(folder: str, file_name: str, prompt: list[int], new_tokens: int) -> list[int]:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    model = ORTModelForCausalLM.from_pretrained(folder, subfolder="onnx", file_name=file_name, use_cache=True,
                                                use_io_binding=False, session_options=so,
                                                provider="CPUExecutionProvider", local_files_only=True)
    ids = torch.tensor([prompt], dtype=torch.long)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         do_sample=False, num_beams=1)
    return [int(t) for t in out[0, len(prompt):]]


def main(argv: list[str]) -> None:
    from importlib.metadata import version

    folder, job = argv[0], json.loads(open(argv[1]).read())
    files = {}
    for name in job["files"]:
        try:
            files[name] = {"ids": generate_ids(folder, name, job["prompt"], job["new_tokens"])}
        except Exception as e:  # recorded per file: the caller reports it, nothing stands in for it
            files[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    versions = {p: version(p) for p in ("optimum-onnx", "optimum", "transformers", "onnxruntime")}
    print(json.dumps({"versions": versions, "files": files}))


if __name__ == "__main__":
    main(sys.argv[1:])
