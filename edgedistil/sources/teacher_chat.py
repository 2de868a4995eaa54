"""The `teacher-chat` corpus: conversations an instruct teacher writes itself, through its own chat template.

A student distilled on text the teacher models badly learns the text, not the teacher (on the King James Bible
the teacher's perplexity is 40 and KD lost to plain CE). Here both sides of each conversation come from the
teacher, as Magpie (Xu et al. 2024) does: the teacher continues its chat template's user-turn prefix, which makes
it write a user request, then it answers that request greedily, as a user would see it answer. The student then
learns the teacher's own distribution, in the format it will be asked in, ending its turns the way the teacher
does. No data set is downloaded, and no benchmark or evaluation prompt can leak into training.

Generation is one-time work: batches are appended to a file in the cache as they finish (a rerun resumes), the
finished corpus is shared by every run with the same teacher and settings, and a progress bar shows it. It runs on
the device and in the precision that training picks (`[distill] device` and `precision`): decoding is bound by
reading the weights, so bf16 on a CPU with native bf16 writes about 2.4x the tokens/s of fp32
(scripts/bench_teacher_chat.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from edgedistil.errors import EdgeError, atomic_file, read_jsonl_prefix, write_json
from edgedistil.sources.cache import cache_dir
from edgedistil.sources.corpus import Corpus

TEACHER_CHAT = "teacher-chat"
_MARK = "\x00USER\x00"  # a placeholder message: the template's text before it is the user-turn prefix


@dataclass(frozen=True)
class ChatSettings:
    conversations: int = 160
    query_tokens: int = 40  # the teacher's user request, sampled (temperature 1, top-p 0.95) and cut here
    answer_tokens: int = 112  # the teacher's greedy answer, cut here
    # > 0: the greedy answer never repeats an n-gram of this length (generate's no_repeat_ngram_size), so fewer
    # answers loop and are left out; 0 = plain greedy
    no_repeat_ngram: int = 0
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"  # where the teacher writes: "cpu" | "cuda"
    dtype: str = "float32"  # the teacher's weights while it writes: "float32" | "bfloat16"
    # read-time filter, not part of the generation key: leave out conversations whose answer loops (the eval's
    # degenerate test), so the student is not taught the teacher's own loops
    drop_loops: bool = False


def chat_settings(recipe) -> ChatSettings:
    """The recipe's settings, with the device and precision that training would pick on this machine."""
    from edgedistil.distill.train import pick_device

    d = recipe.data
    device, autocast = pick_device(recipe.distill.device, recipe.distill.precision)
    return ChatSettings(conversations=d.chat_conversations, query_tokens=d.chat_query_tokens,
                        answer_tokens=d.chat_answer_tokens, no_repeat_ngram=d.chat_no_repeat_ngram,
                        seed=recipe.distill.seed, drop_loops=d.chat_drop_loops,
                        device=device, dtype="bfloat16" if autocast is not None else "float32")


def user_prefix(tokenizer) -> str:
    """The chat template's text up to where a user's first message goes (system prompt included)."""
    if not getattr(tokenizer, "chat_template", None):
        raise EdgeError("the teacher's tokenizer has no chat template, so it cannot write conversations",
                        "use an instruct teacher with a chat template, or set [data] corpus to a text corpus")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False)
    return text[:text.index(_MARK)]


def _generation(settings: ChatSettings) -> dict:
    """What the teacher's writing depends on: the settings less the read-time filter (and no_repeat_ngram when it
    is off, so corpora written before it existed keep their keys)."""
    return {k: v for k, v in asdict(settings).items()
            if k != "drop_loops" and not (k == "no_repeat_ngram" and v == 0)}


def _key(teacher_dir: Path, settings: ChatSettings) -> str:
    from edgedistil.records import folder_fingerprint

    return hashlib.sha256(json.dumps([folder_fingerprint(Path(teacher_dir)), _generation(settings)],
                                     sort_keys=True).encode()).hexdigest()[:16]


def _write_batch(model, tokenizer, prefix_ids, eot: int, settings: ChatSettings, batch: int) -> list[dict]:
    import torch

    torch.manual_seed(settings.seed * 1_000_003 + batch)
    n = min(settings.batch_size, settings.conversations - batch * settings.batch_size)
    ids = torch.tensor([prefix_ids] * n, device=model.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=0.95,
                             top_k=0, max_new_tokens=settings.query_tokens, eos_token_id=eot, pad_token_id=eot)
    queries = [tokenizer.decode(row[len(prefix_ids):], skip_special_tokens=True).strip() for row in out]
    keep = [q for q in queries if q]
    if not keep:
        return []
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in keep]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=settings.answer_tokens, eos_token_id=eot,
                             pad_token_id=eot, no_repeat_ngram_size=settings.no_repeat_ngram)
    rows = []
    for q, row in zip(keep, out[:, enc.input_ids.shape[1]:].cpu().tolist()):
        ended = eot in row
        answer = tokenizer.decode(row[:row.index(eot)] if ended else row, skip_special_tokens=True).strip()
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
        # an answer cut by the token limit keeps no end-of-turn: the student must not learn to stop mid-answer
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        if not ended:
            text = text[:text.rindex(answer) + len(answer)]
        rows.append({"query": q, "answer": answer, "ended": ended, "text": text.rstrip("\n")})
    return rows


def _written_elsewhere(teacher_dir: Path, settings: ChatSettings) -> list[dict]:
    """The conversations of the whole batches that the same teacher with the same settings already wrote for
    another count: batch b is seeded by its index alone, so a full batch is the same whatever the count, and a larger
    corpus starts where a smaller one ended (rows in batch order, as the partial file keeps them)."""
    best: list[dict] = []
    for meta in sorted((cache_dir() / "corpora" / TEACHER_CHAT).glob("*/meta.json")):
        try:
            other = json.loads(meta.read_text())["settings"]["conversations"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if other == settings.conversations or not isinstance(other, int) or other < 1 \
                or _key(teacher_dir, replace(settings, conversations=other)) != meta.parent.name:
            continue
        whole = min(other, settings.conversations) // settings.batch_size  # batches full in both
        rows = [r for r in read_jsonl_prefix(meta.parent / "conversations.jsonl") if r["batch"] < whole]
        if len({r["batch"] for r in rows}) > len({r["batch"] for r in best}):
            best = rows
    return best


def _write_corpus(teacher_dir: Path, tokenizer, prefix: str, settings: ChatSettings, folder: Path, log) -> None:
    """Generate the corpus into `folder` (conversations.jsonl, meta.json), resuming from partial.jsonl or from a
    smaller count's whole batches."""
    from transformers import AutoModelForCausalLM

    done, partial = folder / "conversations.jsonl", folder / "partial.jsonl"
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    if eot is None:
        raise EdgeError(f"the teacher's tokenizer in {teacher_dir} has no eos token to end a turn",
                        "set eos_token in its tokenizer_config.json")
    import torch

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, use_safetensors=True)
    model = model.to(device=settings.device, dtype=getattr(torch, settings.dtype)).eval()
    prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids
    batches = -(-settings.conversations // settings.batch_size)
    rows = read_jsonl_prefix(partial) or _written_elsewhere(teacher_dir, settings)
    first = len({r["batch"] for r in rows})
    rows = [r for r in rows if r["batch"] < first]  # a batch is appended whole or not at all
    with atomic_file(partial) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    from tqdm import tqdm

    log(f"teacher-chat: the teacher writes {settings.conversations} conversations once "
        f"(cached in {folder}; {first} of {batches} batches already done)")
    bar = tqdm(total=batches, initial=first, desc="teacher writes conversations", unit="batch",
               dynamic_ncols=True, disable=not sys.stderr.isatty())
    t0 = time.perf_counter()
    with partial.open("a", encoding="utf-8") as f:
        for b in range(first, batches):
            batch_rows = [{"batch": b, **r} for r in _write_batch(model, tokenizer, prefix_ids, eot, settings, b)]
            f.write("".join(json.dumps(r) + "\n" for r in batch_rows))
            f.flush()
            bar.update(1)
            if bar.disable:
                eta = (time.perf_counter() - t0) / (b + 1 - first) * (batches - b - 1)
                log(f"teacher-chat: batch {b + 1}/{batches}, ETA {eta:.0f} s")
    bar.close()
    rows = read_jsonl_prefix(partial)
    with atomic_file(done) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_json(folder / "meta.json", {"teacher": str(teacher_dir), "settings": _generation(settings),
                                      "conversations": len(rows), "ended": sum(r["ended"] for r in rows),
                                      "batches_written_before": first,
                                      "seconds": round(time.perf_counter() - t0, 1)})
    partial.unlink(missing_ok=True)


def teacher_chat_corpus(teacher_dir: Path, settings: ChatSettings = ChatSettings(),
                        log: Callable[[str], object] = print) -> Corpus:
    """The teacher's conversations, written once into the cache (resumable) and read back on later calls."""
    from transformers import AutoTokenizer

    if settings.conversations < 1 or settings.batch_size < 1 or settings.query_tokens < 1 \
            or settings.answer_tokens < 1 or settings.no_repeat_ngram < 0:
        raise EdgeError(f"teacher-chat settings {asdict(settings)} need positive counts",
                        "set [data] chat_conversations, chat_query_tokens and chat_answer_tokens above 0, and "
                        "chat_no_repeat_ngram to 0 or more")
    if settings.dtype not in ("float32", "bfloat16") or settings.device not in ("cpu", "cuda"):
        raise EdgeError(f"teacher-chat writes on cpu or cuda in float32 or bfloat16, not {settings.device} "
                        f"{settings.dtype}", "set [distill] device and precision to values the recipe allows")
    teacher_dir = Path(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    prefix = user_prefix(tokenizer)  # fails at once for a teacher without a chat template
    key = _key(teacher_dir, settings)
    folder = cache_dir() / "corpora" / TEACHER_CHAT / key
    done = folder / "conversations.jsonl"
    source = f"written by the teacher {teacher_dir} ({settings.conversations} conversations, cache {folder})"
    license_ = "generated by the teacher; the teacher's license applies"
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            # one writer: torchrun's ranks (or two builds) asking for one corpus at once wait for the first, then
            # read what it wrote, instead of appending the same batches to one file together
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.is_file():
                _write_corpus(teacher_dir, tokenizer, prefix, settings, folder, log)
    rows = read_jsonl_prefix(done)
    if settings.drop_loops:
        from edgedistil.eval.behaviour import degenerate

        kept = [r for r in rows if not degenerate(r["answer"])]
        source += f"; {len(rows) - len(kept)} whose answer loops left out"
        rows = kept
    if not rows:
        raise EdgeError(f"no usable conversations in {done}" + (" once looping answers are left out"
                                                                 if settings.drop_loops else ""),
                        f"delete {folder} and retry with more [data] chat_conversations, or use a text corpus")
    texts = [r["text"] for r in rows]
    return Corpus(TEACHER_CHAT, "\n".join(texts), license_, source, texts)
