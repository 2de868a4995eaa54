"""Text to token blocks: the corpus is tokenized once with the teacher's tokenizer and cut into training blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from edgedistil.errors import EdgeError


def load_tokenizer(model_dir: Path) -> Tokenizer:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise EdgeError(f"{model_dir} has no tokenizer.json",
                        "use an HF model folder saved with a fast tokenizer (tokenizer.save_pretrained writes it)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises plain Exceptions for bad files
        raise EdgeError(f"{path} cannot be read as a tokenizer ({str(e).splitlines()[0]})",
                        "re-save the tokenizer with transformers' save_pretrained")


def tokenize(tokenizer: Tokenizer, text: str, lines_per_batch: int = 2048) -> np.ndarray:
    """Token ids of `text` as one int32 array; lines are encoded in batches (the Rust tokenizer runs them in
    parallel) and joined with their newlines, so the result equals encoding the whole text line by line."""
    lines = text.splitlines(keepends=True)
    ids: list[np.ndarray] = []
    for i in range(0, len(lines), lines_per_batch):
        for enc in tokenizer.encode_batch(lines[i:i + lines_per_batch], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.int32))
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)


def check_vocab(tokenizer: Tokenizer, vocab_size: int, who: str) -> None:
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise EdgeError(f"{who}'s tokenizer has {n} tokens but its model has only {vocab_size} embeddings",
                        "use the tokenizer the model was trained with")


def need_tokens(ids: np.ndarray, n: int, what: str, source: str) -> None:
    if len(ids) < n:
        raise EdgeError(f"the {what} split of {source} has {len(ids)} tokens, fewer than the {n} needed",
                        "use a larger corpus, or lower [data] seq_len / heldout_fraction in the recipe")


def sample_blocks(ids: np.ndarray, batch_size: int, block: int, generator: torch.Generator) -> torch.Tensor:
    """`batch_size` random windows of `block` tokens from `ids`, as a LongTensor [B, block]."""
    starts = torch.randint(0, len(ids) - block + 1, (batch_size,), generator=generator)
    return torch.stack([torch.from_numpy(ids[s:s + block].astype(np.int64)) for s in starts.tolist()])
