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


def tokenize(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Token ids of `text` as one int32 array (see tokenize_documents)."""
    return tokenize_documents(tokenizer, [text])[0]


def tokenize_documents(tokenizer: Tokenizer, documents: list[str],
                       lines_per_batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the documents joined by newlines, as one int32 array, and the offset where each document
    starts. Lines are encoded in batches (the Rust tokenizer runs them in parallel) and joined with their newlines,
    so the ids equal encoding the whole text line by line."""
    lines: list[str] = []
    first_line = []
    for i, doc in enumerate(documents):
        first_line.append(len(lines))
        lines.extend((doc if i == len(documents) - 1 else doc + "\n").splitlines(keepends=True))
    ids: list[np.ndarray] = []
    for i in range(0, len(lines), lines_per_batch):
        for enc in tokenizer.encode_batch(lines[i:i + lines_per_batch], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.int32))
    line_starts = np.concatenate([[0], np.cumsum([len(a) for a in ids], dtype=np.int64)])
    all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return all_ids, line_starts[first_line] if first_line else np.zeros(0, dtype=np.int64)


def check_vocab(tokenizer: Tokenizer, vocab_size: int, who: str) -> None:
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise EdgeError(f"{who}'s tokenizer has {n} tokens but its model has only {vocab_size} embeddings",
                        "use the tokenizer the model was trained with")


def need_tokens(ids: np.ndarray, n: int, what: str, source: str) -> None:
    if len(ids) < n:
        raise EdgeError(f"the {what} split of {source} has {len(ids)} tokens, fewer than the {n} needed",
                        "use a larger corpus, or lower [data] seq_len / heldout_fraction in the recipe")


def sample_blocks(ids: np.ndarray, batch_size: int, block: int, generator: torch.Generator,
                  starts: np.ndarray | None = None) -> torch.Tensor:
    """`batch_size` random windows of `block` tokens from `ids`, as a LongTensor [B, block]: anywhere, or, given
    `starts`, each at one of those offsets (a document's start) and running on into the next documents."""
    if starts is None:
        picks = torch.randint(0, len(ids) - block + 1, (batch_size,), generator=generator).tolist()
    else:
        valid = starts[starts <= len(ids) - block]
        picks = valid[torch.randint(0, len(valid), (batch_size,), generator=generator).numpy()].tolist()
    return torch.stack([torch.from_numpy(ids[s:s + block].astype(np.int64)) for s in picks])
