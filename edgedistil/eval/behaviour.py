"""How a model answers chat prompts: greedy answers through the tokenizer's chat template, how close a student's
answers are to its teacher's (ROUGE-L), how often an answer ends its turn, and how often it degenerates.

Generation is transformers' batched `generate` (left padding, KV cache) on the HF folder: every student this
project writes is a folder `AutoModelForCausalLM` loads, and one implementation serves teacher and student alike.
"""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from pathlib import Path

import torch

NEW_TOKENS = 80
BATCH = 16
EOT_NAMES = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")


def chat_prompts() -> list[str]:
    """The shipped prompts: facts, how-to, coding, arithmetic word problems, short creative tasks and advice."""
    text = resources.files("edgedistil.eval").joinpath("chat_prompts.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric runs, as rouge-score's default tokenizer splits text."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure: longest common subsequence of words against both lengths; 0 when either is empty."""
    a, b = words(candidate), words(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


# a piece of 2+ characters 5+ times in a row: loops inside one "word" ("cliclicli...") that words() cannot see
_CHAR_LOOP = re.compile(r"(\S{2,}?)\1{4,}")


def degenerate(text: str) -> bool:
    """Empty (no words: the 25 newlines of an untrained student) or looping: some 3 words repeated 3+ times, or a
    piece of a word repeated 5+ times in a row."""
    w = words(text)
    if not w or _CHAR_LOOP.search(text):
        return True
    grams = Counter(zip(w, w[1:], w[2:]))
    return bool(grams) and max(grams.values()) >= 3


def _end_ids(tok) -> list[int]:
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    for name in EOT_NAMES:
        i = tok.convert_tokens_to_ids(name)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return sorted(ids)


def transformers_lm(model_dir: Path):
    """The folder as a transformers model (fp32, eval), its weights read by edgedistil's own safetensors loader, which
    takes any layout of *.safetensors (one file under any name, or shards with or without an index: torchtune's
    checkpointer writes model-00001-of-00001.safetensors alone, which from_pretrained does not find)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgedistil.errors import EdgeError
    from edgedistil.model import load_hf_folder

    weights = load_hf_folder(model_dir, head="full").state_dict()  # checked against config.json
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir, local_files_only=True))
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in weights]
    if missing:
        raise EdgeError(f"transformers' {type(model).__name__} wants weights {model_dir} does not have "
                        f"({len(missing)}, first: {missing[0]})", "use config.json and *.safetensors from the same "
                        "checkpoint")
    model.load_state_dict({k: weights[k] for k in wanted})
    return model.float().eval()


@torch.no_grad()
def generate_answers(model_dir: Path, prompts: list[str], new_tokens: int = NEW_TOKENS, batch: int = BATCH,
                     log=None, repetition_penalty: float = 1.0, penalty_scope: str = "context",
                     no_repeat_ngram: int = 0) -> dict:
    """Greedy answers for `prompts` (one user turn each); with the chat template when the tokenizer has one.
    `repetition_penalty` > 1 applies transformers' penalty over the whole context (`penalty_scope` "context", as
    the runtimes' generation configs do) or over the answer's own tokens only ("answer"); `no_repeat_ngram` > 0
    forbids any token that would repeat an n-gram (transformers' no_repeat_ngram_size), of the whole context or,
    with `penalty_scope` "answer", of the answer alone. A trimmed head
    (head_rows.json) answers as shipped: the ids it leaves out are never produced."""
    from transformers import (AutoTokenizer, GenerationConfig, LogitsProcessorList, NoRepeatNGramLogitsProcessor,
                              RepetitionPenaltyLogitsProcessor)

    from edgedistil.model.hf_io import left_out_ids, read_head_rows

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = transformers_lm(model_dir)
    ends = _end_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else ends[0]
    chat = bool(getattr(tok, "chat_template", None))
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             if chat else p for p in prompts]
    tok.padding_side = "left"
    context_penalty = repetition_penalty if penalty_scope == "context" else 1.0
    kept = read_head_rows(model_dir)
    suppress = left_out_ids(kept, model.config.vocab_size) if kept else None
    cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=ends, pad_token_id=pad,
                           repetition_penalty=context_penalty, suppress_tokens=suppress,
                           no_repeat_ngram_size=no_repeat_ngram if penalty_scope == "context" else 0)
    # similar lengths share a batch, so left padding stays short
    order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i], add_special_tokens=False).input_ids))
    answers: list[dict] = [{}] * len(texts)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_len = enc.input_ids.shape[1]  # left padded: every row's answer starts here
        answer_only = LogitsProcessorList(
            ([RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=prompt_len)]
             if penalty_scope == "answer" and repetition_penalty != 1.0 else []) +
            ([_AnswerNoRepeatNGram(no_repeat_ngram, prompt_len, NoRepeatNGramLogitsProcessor)]
             if penalty_scope == "answer" and no_repeat_ngram else []))
        out = model.generate(**enc, generation_config=cfg, logits_processor=answer_only)[:, prompt_len:].tolist()
        for i, ids in zip(idx, out):
            stop = next((k for k, t in enumerate(ids) if t in ends), None)
            answers[i] = {"text": tok.decode(ids[:stop], skip_special_tokens=True), "tokens": len(ids[:stop]),
                          "ended": stop is not None, "ids": ids[:stop]}
        if log:
            log(f"eval: {Path(model_dir).name} answered {min(s + batch, len(order))}/{len(order)} chat prompts")
    return {"chat_template": chat, "new_tokens": new_tokens, "head_rows": len(kept) if kept else None,
            "answers": answers}


class _AnswerNoRepeatNGram:
    """transformers' no_repeat_ngram_size over the answer's own tokens: the question's phrases may be echoed."""

    def __init__(self, n: int, prompt_len: int, processor):
        self.prompt_len, self.processor = prompt_len, processor(n)

    def __call__(self, input_ids, scores):
        return self.processor(input_ids[:, self.prompt_len:], scores)


def summarize(answers: list[dict]) -> dict:
    n = len(answers)
    return {"ends_with_end_of_turn": sum(a["ended"] for a in answers) / n,
            "degenerate": sum(degenerate(a["text"]) for a in answers) / n,
            "mean_tokens": sum(a["tokens"] for a in answers) / n}


def compare(prompts: list[str], student: dict | None, teacher: dict | None) -> dict:
    """The behaviour section of eval.json: each model's summary, ROUGE-L of student vs teacher, every answer."""
    out = {"prompts": len(prompts), "new_tokens": (student or teacher)["new_tokens"], "decoding": "greedy",
           "chat_template": (student or teacher)["chat_template"],
           "student_head_rows": (student or {}).get("head_rows")}  # a trimmed head answers as shipped
    rows = [{"prompt": p} for p in prompts]
    for role, gen in (("student", student), ("teacher", teacher)):
        if gen is not None:
            out[role] = summarize(gen["answers"])
            for row, a in zip(rows, gen["answers"]):
                row[role] = a["text"]
    if student is not None and teacher is not None:
        for row in rows:
            row["rouge_l"] = round(rouge_l(row["student"], row["teacher"]), 4)
        out["rouge_l_vs_teacher"] = sum(r["rouge_l"] for r in rows) / len(rows)
    out["answers"] = rows
    return out
