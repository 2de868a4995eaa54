"""Read and write Hugging Face model folders (config.json + *.safetensors) as EdgeLM, without transformers.

Weights are only ever read with safetensors: a checkpoint is untrusted input and pickle (*.bin / *.pt) can run code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgedistil.errors import EdgeError, atomic_dir
from edgedistil.model.edge_lm import EdgeConfig, EdgeLM

_TEACHER_FIX = (
    "pass --teacher PATH pointing at a folder with config.json and *.safetensors "
    "(a downloaded Hugging Face model folder; hub ids are not fetched)"
)
# an HF student folder's trimmed output head (EdgeLM.trim_head): the token ids it keeps
HEAD_ROWS_FILE = "head_rows.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    # Slow-tokenizer files, for checkpoints that ship them alongside or instead of tokenizer.json.
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Buffers some old Llama checkpoints saved; derived from the config, so safe to drop.
_BENIGN_SUFFIXES = (".rotary_emb.inv_freq",)


def read_hf_config(folder) -> EdgeConfig:
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise EdgeError(f"model folder {folder} does not exist", _TEACHER_FIX)
    if not path.is_file():
        raise EdgeError(f"{folder} has no config.json", _TEACHER_FIX)
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeError(f"{path} is not valid JSON ({e})", _TEACHER_FIX) from None
    if not isinstance(d, dict):
        raise EdgeError(f"{path} is not a JSON object", _TEACHER_FIX)
    return EdgeConfig.from_hf_dict(d)


def _read_weights(folder: Path, dtype) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise EdgeError(
                f"{folder} holds only pickle weights ({', '.join(pickles)}); only *.safetensors is loaded, "
                "because unpickling a checkpoint can run arbitrary code",
                "convert it once where you trust the file, e.g. AutoModelForCausalLM.from_pretrained(DIR)"
                ".save_pretrained(OUT) (transformers writes safetensors), and pass OUT",
            )
        raise EdgeError(f"{folder} has no *.safetensors weights", _TEACHER_FIX)
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except SafetensorError as e:
            raise EdgeError(f"{f} is truncated or corrupt ({e})", "re-download or re-export the checkpoint") from None
        for k, t in part.items():
            if k in origin:
                raise EdgeError(
                    f"weight {k} is in both {origin[k]} and {f.name} in {folder}",
                    "remove the stale .safetensors file so each weight is stored once",
                )
            origin[k] = f.name
            # Cast as we go so peak memory is one file's worth of source-dtype tensors.
            state[k] = t.to(dtype) if t.is_floating_point() else t
        del part
    return state


def load_hf_folder(folder, dtype=torch.float32, max_len=None, head: str = "shipped") -> EdgeLM:
    """EdgeLM with the weights of an HF Llama/Qwen2 folder, in `dtype`, in eval mode.

    head "shipped": with the folder's head_rows.json (a student whose head was trimmed), the model as every export
    ships it, its head cut to those rows; "full": the whole head, as transformers reads the folder."""
    folder = Path(folder)
    if head not in ("shipped", "full"):
        raise ValueError(f"head must be 'shipped' or 'full', got {head!r}")
    cfg = read_hf_config(folder)
    state = _read_weights(folder, dtype)
    # Meta device: no time or memory spent on random init of weights that are about to be replaced.
    with torch.device("meta"):
        model = EdgeLM(cfg, max_len=max_len)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
        state.pop("lm_head.weight", None)  # some tied checkpoints store it anyway; the embedding is the source
    for k in [k for k in state if k.endswith(_BENIGN_SUFFIXES)]:
        del state[k]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise EdgeError(
            f"weights in {folder} do not match its {cfg.model_type} config.json: {', '.join(parts)}",
            "use config.json and *.safetensors from the same checkpoint",
        )
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise EdgeError(
                f"weight {k} in {folder} has shape {tuple(state[k].shape)} but config.json implies {shape}",
                "use config.json and *.safetensors from the same checkpoint",
            )
    # strict=False only because a tied lm_head.weight is deliberately absent; keys were checked above.
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # assign=True replaced the shared Parameter
    model.build_rope()
    kept = read_head_rows(folder) if head == "shipped" else None
    if kept is not None:
        model.trim_head(kept)
    return model.eval()


def read_head_rows(folder) -> list[int] | None:
    """The token ids a trimmed head keeps (the folder's head_rows.json), or None for a whole head."""
    path = Path(folder) / HEAD_ROWS_FILE
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())["kept_ids"]
        return [int(i) for i in kept]
    except (ValueError, KeyError, TypeError) as e:
        raise EdgeError(f"{path} is not a head_rows file ({e})",
                        "delete it for the whole head, or rebuild the student with `edgedistil distill`") from None


def write_head_rows(folder, kept_ids: list[int], vocab_size: int, how: str) -> None:
    """Record a trimmed head in an HF student folder: head_rows.json for edgedistil's loaders and exports, and the
    other ids as generation_config.json's suppress_tokens, so transformers' generate() decodes as the exports do."""
    folder = Path(folder)
    kept = sorted(int(i) for i in kept_ids)
    (folder / HEAD_ROWS_FILE).write_text(json.dumps({"rows": len(kept), "vocab_size": vocab_size, "ranked_by": how,
                                                     "kept_ids": kept}) + "\n")
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    gen["suppress_tokens"] = left_out_ids(kept, vocab_size)
    gen_path.write_text(json.dumps(gen, indent=2) + "\n")


def left_out_ids(kept_ids: list[int], vocab_size: int) -> list[int]:
    """The ids a trimmed head keeping `kept_ids` never produces (generation configs' suppress_tokens)."""
    inside = set(kept_ids)
    return [i for i in range(vocab_size) if i not in inside]


def save_hf_folder(model: EdgeLM, folder, config_overrides: dict | None = None, tokenizer_from: Path | None = None):
    """Write `folder` (atomically) as an HF model folder that AutoModelForCausalLM.from_pretrained loads."""
    folder = Path(folder)
    if model.head_index is not None:
        raise ValueError("save the student before trim_head: an HF folder keeps the whole head (write_head_rows)")
    emb = model.model.embed_tokens.weight
    tied = model.lm_head.weight is emb
    # Sizes from the model itself, so a student whose layer list was cut after construction saves correctly.
    overrides = {
        "num_hidden_layers": len(model.model.layers),
        "vocab_size": emb.shape[0],
        "hidden_size": emb.shape[1],
        "tie_word_embeddings": tied,
        "dtype": str(emb.dtype).removeprefix("torch."),  # else transformers may load in the teacher's dtype
    }
    overrides.update(config_overrides or {})
    config = model.cfg.to_hf_dict(**overrides)
    if "torch_dtype" in config:  # transformers 4.x spelling
        config["torch_dtype"] = config["dtype"]

    tensors = {}
    for k, t in model.state_dict().items():
        if tied and k == "lm_head.weight":
            continue
        tensors[k] = t.detach().to("cpu").contiguous()

    tok_src = Path(tokenizer_from) if tokenizer_from is not None else None
    if tok_src is not None and not tok_src.is_dir():
        raise EdgeError(f"tokenizer folder {tok_src} does not exist", "pass the teacher's model folder")

    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tok_src is not None:
            for name in TOKENIZER_FILES:
                if (tok_src / name).is_file():
                    shutil.copy2(tok_src / name, tmp / name)
    return folder
