"""The Hugging Face ONNX layout: one folder that Transformers.js, onnxruntime-genai and Optimum load as it is.

    config.json, generation_config.json     the student's (transformers' own files)
    genai_config.json                       onnxruntime-genai: the decoder file, its I/O names, the search defaults
    tokenizer.json, tokenizer_config.json   with the chat template inline (Transformers.js reads it only there)
    onnx/model.onnx                         fp32; onnx/model_quantized.onnx (q8), model_q4.onnx, model_fp16.onnx

The graphs are the "hf" export (export/gqa.py, io="hf"): int64 input_ids and attention_mask, per-layer
past_key_values.{i}.key|value with numeric kv_heads and head_dim, GroupQueryAttention, weights inline. The file
names are the ones Transformers.js' `dtype` option picks (shared/notes/consumers.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgedistil.errors import EdgeError, read_json, write_json
from edgedistil.quantize import PRECISION

# Transformers.js dtype -> file under onnx/
DTYPE_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "q8": "model_quantized.onnx", "q4": "model_q4.onnx"}
# the precision whose fidelity floors a file of that dtype is held to
DTYPE_PRECISION = {"fp32": "fp32", "fp16": "fp16", "q8": "int8", "q4": "int4"}
EXPORT = "fp32"  # the method name for "the fp32 export itself, not quantized"
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json")


def check_hf_files(hf_files: dict[str, str], where: str) -> None:
    """A profile's `hf_onnx` table: Transformers.js dtypes mapped to the method that makes each file."""
    for dtype, method in hf_files.items():
        if dtype not in DTYPE_FILES:
            raise EdgeError(f"{where}: hf_onnx names dtype '{dtype}'",
                            f"use Transformers.js dtypes: {', '.join(DTYPE_FILES)}")
        precision = "fp32" if method == EXPORT else PRECISION.get(method)
        if precision != DTYPE_PRECISION[dtype]:
            fits = [m for m, p in PRECISION.items() if p == DTYPE_PRECISION[dtype]] or [EXPORT]
            raise EdgeError(f"{where}: hf_onnx.{dtype} = '{method}' is not a {DTYPE_PRECISION[dtype]} method",
                            f"use one of: {', '.join(fits if dtype != 'fp32' else [EXPORT])}")


def chat_template(student_dir: Path) -> str | None:
    """The tokenizer's chat template: transformers 5 saves it as chat_template.jinja, older ones inline."""
    jinja = Path(student_dir) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = Path(student_dir) / "tokenizer_config.json"
    template = read_json(config, "tokenizer config").get("chat_template") if config.is_file() else None
    return template if isinstance(template, str) else None


def genai_config(config: dict, generation: dict, decoder_file: str, max_len: int) -> dict:
    """onnxruntime-genai's genai_config.json for the hf graph. Past and present may share one buffer: the graph's
    GroupQueryAttention writes the new rows in place (genai's past_present_share_buffer)."""
    def first(value):
        return value[0] if isinstance(value, list) else value

    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    return {
        "model": {
            "bos_token_id": config.get("bos_token_id"),
            "eos_token_id": eos,
            "pad_token_id": first(generation.get("pad_token_id", config.get("pad_token_id", first(eos)))),
            "context_length": max_len,
            "type": config["model_type"],
            "vocab_size": config["vocab_size"],
            "decoder": {
                "filename": decoder_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
                "hidden_size": config["hidden_size"],
                "num_attention_heads": config["num_attention_heads"],
                "num_hidden_layers": config["num_hidden_layers"],
                "num_key_value_heads": config["num_key_value_heads"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": max_len, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def decoder_file(dtypes: list[str]) -> str:
    """The file genai_config.json names: fp32 where the folder has it, else the first one it ships."""
    return "onnx/" + DTYPE_FILES["fp32" if "fp32" in dtypes else dtypes[0]]


def write_hf_folder(dest: Path, student_dir: Path, graphs: dict[str, Path], max_len: int) -> list[str]:
    """Write the layout into the existing folder `dest`: `graphs` maps Transformers.js dtypes to hf ONNX files.
    Returns the paths written, relative to `dest`."""
    dest, student_dir = Path(dest), Path(student_dir)
    config = read_json(student_dir / "config.json", "student config")
    gen_path = student_dir / "generation_config.json"
    generation = read_json(gen_path, "generation config") if gen_path.is_file() else {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    written = {"config.json": config, "generation_config.json": generation,
               "genai_config.json": genai_config(config, generation, decoder_file(list(graphs)), max_len)}
    tok_config = read_json(student_dir / "tokenizer_config.json", "tokenizer config")
    template = chat_template(student_dir)
    if template:
        tok_config["chat_template"] = template
    written["tokenizer_config.json"] = tok_config
    for name, content in written.items():
        write_json(dest / name, content)
    for name in TOKENIZER_FILES:
        if (student_dir / name).is_file():
            shutil.copy2(student_dir / name, dest / name)
    (dest / "onnx").mkdir(exist_ok=True)
    for dtype, path in graphs.items():
        shutil.copy2(path, dest / "onnx" / DTYPE_FILES[dtype])
    return sorted([*written, *(n for n in TOKENIZER_FILES if (dest / n).is_file()),
                   *(f"onnx/{DTYPE_FILES[d]}" for d in graphs)])


def hf_graph_sources(run_out: Path, hf_files: dict[str, str]) -> dict[str, Path]:
    """Where each dtype's hf graph lies in a run folder: the hf export (fp32) or its quantize stage's output."""
    return {dtype: run_out / ("export/student-hf" if method == EXPORT else f"quantize/{method}-hf") / "model.onnx"
            for dtype, method in hf_files.items()}


def hf_fidelity(run_out: Path, hf_files: dict[str, str]) -> dict[str, dict]:
    """Each file's fidelity against the fp32 PyTorch student, with its floors, from its stage's record."""
    out = {}
    for dtype, method in hf_files.items():
        folder = "export/student-hf" if method == EXPORT else f"quantize/{method}-hf"
        record = read_json(run_out / folder / "record.json", f"{folder} record")
        f = record["fidelity"]
        out[DTYPE_FILES[dtype]] = {
            "dtype": dtype, "method": method, "bytes": record["bytes"], "sha256": record["sha256"],
            **{k: f.get(k) for k in ("top1_agreement", "kl_mean", "max_abs_diff", "greedy_tokens_matching",
                                     "greedy_tokens", "perplexity_change", "positions_compared")},
            "floors": record["floors"], "reference": "fp32 PyTorch student",
            "runtime": "onnxruntime CPU (host), one max_len buffer per layer shared by past and present"}
    return out
