"""The `teacher-chat` corpus: conversations an instruct teacher writes itself, through its own chat template.

A student distilled on text the teacher models badly learns the text, not the teacher (on the King James Bible
the teacher's perplexity is 40 and KD lost to plain CE). Here both sides of each conversation come from the
teacher, as Magpie (Xu et al. 2024) does: the teacher continues its chat template's user-turn prefix, which makes
it write a user request, then it answers that request greedily, as a user would see it answer. The student then
learns the teacher's own distribution, in the format it will be asked in, ending its turns the way the teacher
does. No data set is downloaded, and no benchmark or evaluation prompt can leak into training.

Conversations are one kind of text: a few hundred of them hold about 35k tokens. With `[data] chat_documents` the
teacher also writes documents from its document-start token, with no prompt: samples of its own pretraining
distribution (web pages, lessons, code, maths), general text it models well by construction, mixed in with the
conversations and cached apart from them (what they buy is measured in docs/quality.md, "Documents the teacher
writes").

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
    # documents the teacher writes from its document-start token (sampled, temperature 1, top-p 0.95), mixed in with
    # the conversations; generated and cached apart from them, so the conversations' key does not change
    documents: int = 0
    document_tokens: int = 192  # each document is cut here


def chat_settings(recipe) -> ChatSettings:
    """The recipe's settings, with the device and precision that training would pick on this machine."""
    from edgedistil.distill.train import pick_device

    d = recipe.data
    device, autocast = pick_device(recipe.distill.device, recipe.distill.precision)
    return ChatSettings(conversations=d.chat_conversations, query_tokens=d.chat_query_tokens,
                        answer_tokens=d.chat_answer_tokens, no_repeat_ngram=d.chat_no_repeat_ngram,
                        seed=recipe.distill.seed, drop_loops=d.chat_drop_loops, documents=d.chat_documents,
                        document_tokens=d.chat_document_tokens,
                        device=device, dtype="bfloat16" if autocast is not None else "float32")


def user_prefix(tokenizer) -> str:
    """The chat template's text up to where a user's first message goes (system prompt included)."""
    if not getattr(tokenizer, "chat_template", None):
        raise EdgeError("the teacher's tokenizer has no chat template, so it cannot write conversations",
                        "use an instruct teacher with a chat template, or set [data] corpus to a text corpus")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False)
    return text[:text.index(_MARK)]


_DOCUMENT_FIELDS = ("documents", "document_tokens")


def _generation(settings: ChatSettings) -> dict:
    """What the teacher's conversations depend on: the settings less the read-time filter and the documents (and
    no_repeat_ngram when it is off, so corpora written before it existed keep their keys)."""
    return {k: v for k, v in asdict(settings).items()
            if k != "drop_loops" and k not in _DOCUMENT_FIELDS and not (k == "no_repeat_ngram" and v == 0)}


def _document_generation(settings: ChatSettings) -> dict:
    """What the teacher's documents depend on."""
    return {"documents": settings.documents, "document_tokens": settings.document_tokens,
            **{k: getattr(settings, k) for k in ("batch_size", "seed", "device", "dtype")}}


def _key(teacher_dir: Path, settings: ChatSettings, documents: bool = False) -> str:
    from edgedistil.records import folder_fingerprint

    generation = _document_generation(settings) if documents else _generation(settings)
    return hashlib.sha256(json.dumps([folder_fingerprint(Path(teacher_dir)), generation],
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


def document_start(tokenizer) -> int:
    """The token a document starts after in the teacher's pretraining: its end-of-text separator where the
    vocabulary has one (SmolLM2's <|endoftext|>; its bos is the chat's <|im_start|>), else bos, else eos."""
    for name in ("<|endoftext|>", tokenizer.bos_token, tokenizer.eos_token):
        if name is not None and name in tokenizer.get_vocab():
            return tokenizer.convert_tokens_to_ids(name)
    raise EdgeError("the teacher's tokenizer has no end-of-text, bos or eos token to start a document after",
                    "set [data] chat_documents = 0, or set bos_token in its tokenizer_config.json")


def _write_document_batch(model, tokenizer, start: int, settings: ChatSettings, batch: int) -> list[dict]:
    import torch

    torch.manual_seed(settings.seed * 1_000_003 + batch)
    n = min(settings.batch_size, settings.documents - batch * settings.batch_size)
    ids = torch.full((n, 1), start, device=model.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=0.95,
                             top_k=0, max_new_tokens=settings.document_tokens, eos_token_id=start, pad_token_id=start)
    rows = []
    for row in out[:, 1:].cpu().tolist():
        ended = start in row
        text = tokenizer.decode(row[:row.index(start)] if ended else row, skip_special_tokens=True).strip()
        if text:
            rows.append({"text": text, "ended": ended})
    return rows


@dataclass(frozen=True)
class _Job:
    """One teacher-written corpus in the cache: its rows, how many, and how a batch of them is written."""
    kind: str  # "conversations" | "documents"
    count: int
    key: Callable[[int], str]  # its cache key at another count (whole batches carry over between counts)
    folder: Path


def _written_elsewhere(job: _Job, batch_size: int) -> list[dict]:
    """The rows of the whole batches that the same teacher with the same settings already wrote for another count:
    batch b is seeded by its index alone, so a full batch is the same whatever the count, and a larger corpus
    starts where a smaller one ended (rows in batch order, as the partial file keeps them)."""
    best: list[dict] = []
    for meta in sorted(job.folder.parent.glob("*/meta.json")):
        try:
            other = json.loads(meta.read_text())["settings"][job.kind]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if other == job.count or not isinstance(other, int) or other < 1 or job.key(other) != meta.parent.name:
            continue
        whole = min(other, job.count) // batch_size  # batches full in both
        rows = [r for r in read_jsonl_prefix(meta.parent / f"{job.kind}.jsonl") if r["batch"] < whole]
        if len({r["batch"] for r in rows}) > len({r["batch"] for r in best}):
            best = rows
    return best


def _write_rows(job: _Job, teacher_dir: Path, settings: ChatSettings, generation: dict,
                write_batch: Callable[[int], list[dict]], log) -> None:
    """Write `job` into its folder (<kind>.jsonl, meta.json) a batch at a time, resuming from partial.jsonl or from
    another count's whole batches."""
    folder = job.folder
    done, partial = folder / f"{job.kind}.jsonl", folder / "partial.jsonl"
    batches = -(-job.count // settings.batch_size)
    rows = read_jsonl_prefix(partial) or _written_elsewhere(job, settings.batch_size)
    first = len({r["batch"] for r in rows})
    rows = [r for r in rows if r["batch"] < first]  # a batch is appended whole or not at all
    with atomic_file(partial) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    from tqdm import tqdm

    log(f"teacher-chat: the teacher writes {job.count} {job.kind} once "
        f"(cached in {folder}; {first} of {batches} batches already done)")
    bar = tqdm(total=batches, initial=first, desc=f"teacher writes {job.kind}", unit="batch",
               dynamic_ncols=True, disable=not sys.stderr.isatty())
    t0 = time.perf_counter()
    with partial.open("a", encoding="utf-8") as f:
        for b in range(first, batches):
            f.write("".join(json.dumps({"batch": b, **r}) + "\n" for r in write_batch(b)))
            f.flush()
            bar.update(1)
            if bar.disable:
                eta = (time.perf_counter() - t0) / (b + 1 - first) * (batches - b - 1)
                log(f"teacher-chat: {job.kind} batch {b + 1}/{batches}, ETA {eta:.0f} s")
    bar.close()
    rows = read_jsonl_prefix(partial)
    with atomic_file(done) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_json(folder / "meta.json", {"teacher": str(teacher_dir), "settings": generation, job.kind: len(rows),
                                      "ended": sum(r["ended"] for r in rows), "batches_written_before": first,
                                      "seconds": round(time.perf_counter() - t0, 1)})
    partial.unlink(missing_ok=True)


def _cached_rows(job: _Job, teacher_dir: Path, settings: ChatSettings, generation: dict, batch_writer,
                 log) -> list[dict]:
    """The job's rows, written once under a lock (torchrun's ranks, or two builds, asking at once wait for the first
    writer, then read what it wrote) and read back on later calls."""
    done = job.folder / f"{job.kind}.jsonl"
    if not done.is_file():
        job.folder.mkdir(parents=True, exist_ok=True)
        with open(job.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.is_file():
                from transformers import AutoModelForCausalLM
                import torch

                model = AutoModelForCausalLM.from_pretrained(teacher_dir, use_safetensors=True)
                model = model.to(device=settings.device, dtype=getattr(torch, settings.dtype)).eval()
                _write_rows(job, teacher_dir, settings, generation, batch_writer(model), log)
    return read_jsonl_prefix(done)


def _conversation_rows(teacher_dir: Path, tokenizer, prefix: str, settings: ChatSettings, log) -> list[dict]:
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    if eot is None:
        raise EdgeError(f"the teacher's tokenizer in {teacher_dir} has no eos token to end a turn",
                        "set eos_token in its tokenizer_config.json")
    prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids
    job = _Job("conversations", settings.conversations,
               lambda n: _key(teacher_dir, replace(settings, conversations=n)),
               cache_dir() / "corpora" / TEACHER_CHAT / _key(teacher_dir, settings))
    return _cached_rows(job, teacher_dir, settings, _generation(settings),
                        lambda model: lambda b: _write_batch(model, tokenizer, prefix_ids, eot, settings, b), log)


def _document_rows(teacher_dir: Path, tokenizer, settings: ChatSettings, log) -> list[dict]:
    start = document_start(tokenizer)
    job = _Job("documents", settings.documents,
               lambda n: _key(teacher_dir, replace(settings, documents=n), documents=True),
               cache_dir() / "corpora" / "teacher-documents" / _key(teacher_dir, settings, documents=True))
    return _cached_rows(job, teacher_dir, settings, _document_generation(settings),
                        lambda model: lambda b: _write_document_batch(model, tokenizer, start, settings, b), log)


def teacher_chat_corpus(teacher_dir: Path, settings: ChatSettings = ChatSettings(),
                        log: Callable[[str], object] = print) -> Corpus:
    """The teacher's conversations (and documents, with `settings.documents`), written once into the cache
    (resumable) and read back on later calls."""
    from transformers import AutoTokenizer

    if settings.conversations < 1 or settings.batch_size < 1 or settings.query_tokens < 1 \
            or settings.answer_tokens < 1 or settings.no_repeat_ngram < 0 or settings.documents < 0 \
            or settings.document_tokens < 1:
        raise EdgeError(f"teacher-chat settings {asdict(settings)} need positive counts",
                        "set [data] chat_conversations, chat_query_tokens, chat_answer_tokens and "
                        "chat_document_tokens above 0, and chat_no_repeat_ngram and chat_documents to 0 or more")
    if settings.dtype not in ("float32", "bfloat16") or settings.device not in ("cpu", "cuda"):
        raise EdgeError(f"teacher-chat writes on cpu or cuda in float32 or bfloat16, not {settings.device} "
                        f"{settings.dtype}", "set [distill] device and precision to values the recipe allows")
    teacher_dir = Path(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    prefix = user_prefix(tokenizer)  # fails at once for a teacher without a chat template
    if settings.documents:
        document_start(tokenizer)  # fails before any writing for a teacher that cannot start a document
    rows = _conversation_rows(teacher_dir, tokenizer, prefix, settings, log)
    source = (f"written by the teacher {teacher_dir} ({settings.conversations} conversations, cache "
              f"{cache_dir() / 'corpora' / TEACHER_CHAT / _key(teacher_dir, settings)}")
    if settings.drop_loops:
        from edgedistil.eval.behaviour import degenerate

        kept = [r for r in rows if not degenerate(r["answer"])]
        source += f"; {len(rows) - len(kept)} whose answer loops left out"
        rows = kept
    if not rows:
        raise EdgeError(f"no usable conversations from the teacher" + (" once looping answers are left out"
                                                                       if settings.drop_loops else ""),
                        f"delete {cache_dir() / 'corpora' / TEACHER_CHAT} and retry with more [data] "
                        "chat_conversations, or use a text corpus")
    texts = [r["text"] for r in rows]
    if settings.documents:
        documents = [r["text"] for r in _document_rows(teacher_dir, tokenizer, settings, log)]
        source += f"; and {len(documents)} documents it wrote from its document-start token"
        texts += documents
    source += ")"
    return Corpus(TEACHER_CHAT, "\n".join(texts), "generated by the teacher; the teacher's license applies",
                  source, texts)
