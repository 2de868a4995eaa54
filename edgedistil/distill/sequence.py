"""Sequence-level KD (Kim & Rush): the teacher writes completions for a prompt set; the student learns the texts.

The texts go to a JSONL dataset (`prompt`, `completion`, `text` = both) that the student reads with its own
tokenizer, so this path works when teacher and student tokenizers differ. Generation is batched, shows a progress
bar, and resumes: each batch is seeded by its index and appended as soon as it is done, and a rerun with the same
teacher, prompts and sampling settings skips the batches already in the file.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from edgedistil.config import SequenceConfig
from edgedistil.distill.data import tokenize
from edgedistil.errors import EdgeError, atomic_file, read_jsonl_prefix, write_json
from edgedistil.model import EdgeLM


def read_prompts(spec: str, train_ids: np.ndarray, tokenizer: Tokenizer, cfg: SequenceConfig) -> list[list[int]]:
    """Prompt token ids: evenly spaced windows of the training corpus, or the lines of a .txt / the `prompt`
    (else `text`) fields of a .jsonl file, each cut to its last `prompt_tokens` tokens."""
    if not spec:
        if len(train_ids) < cfg.prompt_tokens + 1:
            raise EdgeError(f"the training text has {len(train_ids)} tokens, too few for {cfg.prompt_tokens}-token "
                            "prompts", "use a larger corpus or lower [sequence] prompt_tokens")
        starts = np.linspace(0, len(train_ids) - cfg.prompt_tokens, cfg.num_prompts).astype(int)
        return [train_ids[s:s + cfg.prompt_tokens].tolist() for s in starts]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise EdgeError(f"[sequence] prompts file {path} does not exist",
                        "pass a .txt file (one prompt a line) or a .jsonl file with a \"prompt\" or \"text\" field")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        texts = []
        for n, ln in enumerate(lines, 1):
            try:
                row = json.loads(ln)
                texts.append(row["prompt"] if "prompt" in row else row["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EdgeError(f"{path} line {n} is not a JSON object with a \"prompt\" or \"text\" string",
                                "write one JSON object per line, e.g. {\"prompt\": \"Once upon a time\"}") from None
    else:
        texts = lines
    prompts = [tokenize(tokenizer, t)[-cfg.prompt_tokens:].tolist() for t in texts[:cfg.num_prompts]]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise EdgeError(f"{path} holds no prompts", "add at least one non-empty prompt")
    return prompts


def sample_next(logits: torch.Tensor, cfg: SequenceConfig, gen: torch.Generator) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: greedy at temperature 0, else temperature, top-k and top-p."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1).cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(teacher: EdgeLM, prompts: torch.Tensor, cfg: SequenceConfig, gen: torch.Generator) -> torch.Tensor:
    """Completions [B, new_tokens] for equal-length prompts [B, P]; a full forward a token (no cache needed for
    the short completions this is used with, and every batch row stays in lockstep)."""
    ids = prompts
    for _ in range(cfg.new_tokens):
        logits = teacher(ids[:, -teacher.max_len:])[:, -1]
        ids = torch.cat([ids, sample_next(logits, cfg, gen)[:, None]], dim=1)
    return ids[:, prompts.shape[1]:]


def batches(prompts: list[list[int]], size: int) -> list[list[int]]:
    """Prompt indices in batches of equal-length prompts, in a fixed order."""
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    return [idx[j:j + size] for _, idx in sorted(by_len.items()) for j in range(0, len(idx), size)]


def teacher_texts(teacher: EdgeLM, teacher_dir: Path, tokenizer: Tokenizer, prompts: list[list[int]],
                  cfg: SequenceConfig, folder: Path, device: str = "cpu", log=print) -> tuple[list[str], dict]:
    """Generate (or resume generating) `folder`/completions.jsonl; returns the texts and a record."""
    from edgedistil.records import folder_fingerprint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([folder_fingerprint(Path(teacher_dir)), prompts, vars(cfg)],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path, meta = folder / "completions.jsonl", folder / "meta.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("key") == key):
        path.unlink(missing_ok=True)  # another teacher, prompt set or sampling: start over
        write_json(meta, {"key": key, "config": vars(cfg)})
    rows = read_jsonl_prefix(path)
    plan = batches(prompts, cfg.batch_size)
    # a batch is appended whole; a line cut by a kill is dropped and its batch redone
    n_done_batches = 0
    count = 0
    for b in plan:
        if count + len(b) > len(rows):
            break
        count += len(b)
        n_done_batches += 1
    rows = rows[:count]
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if n_done_batches:
        log(f"sequence KD: resuming teacher generation after {count} of {len(prompts)} prompts")
    eot = tokenizer.token_to_id("<|endoftext|>")
    bar = tqdm(total=len(prompts), initial=count, desc="teacher generates", unit="prompt", dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    with path.open("a", encoding="utf-8") as f:
        for bi in range(n_done_batches, len(plan)):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + bi)
            x = torch.tensor([prompts[i] for i in plan[bi]], dtype=torch.long, device=device)
            out = generate(teacher, x, cfg, gen).cpu().tolist()
            lines = []
            for i, completion in zip(plan[bi], out):
                if eot is not None and eot in completion:
                    completion = completion[:completion.index(eot)]
                prompt = tokenizer.decode(prompts[i], skip_special_tokens=True)
                text = tokenizer.decode(completion, skip_special_tokens=True)
                lines.append(json.dumps({"index": i, "prompt": prompt, "completion": text, "text": prompt + text}))
            f.write("\n".join(lines) + "\n")
            f.flush()
            bar.update(len(plan[bi]))
            if bar.disable and (bi + 1) % max(1, len(plan) // 10) == 0:
                log(f"sequence KD: teacher wrote {bar.n}/{len(prompts)} completions")
    bar.close()
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]
    record = {"file": str(path), "prompts": len(prompts), "completions": len(rows), "resumed_after": count,
              "sampling": vars(cfg)}
    return [r["text"] for r in rows], record
