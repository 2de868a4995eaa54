"""A `.litertlm` for LiteRT-LM (Android's `com.google.ai.edge.litertlm`): the LiteRT-LM-convention .tflite, the HF
tokenizer and an `LlmMetadata` taken from the model folder's tokenizer and generation config, packed with
litert-lm-builder (the same `LitertLmFileBuilder` its CLI runs), then unpacked again and compared section by section.

The metadata (the contract, probed in shared/notes/consumers.md):
- `stop_tokens`: generation_config's eos ids and the tokenizer's eos token, as ids (never a newline: LiteRT-LM#950);
- `start_token`: the bos id only where the tokenizer itself adds it on encode (SmolLM2's does not; LiteRT-LM would
  otherwise prepend a token the model never saw first);
- `jinja_prompt_template`: the chat template, so the Conversation API renders prompts as the teacher was trained.
  LiteRT-LM hands the template each message's content as a list of parts (`[{"type": "text", "text": ...}]`), and
  HF templates that concatenate `message['content']` fail there ("tried to use + operator on unsupported types
  string and sequence"), so a preamble joins the text parts back into a string first (`CONTENT_AS_STRING`);
- `max_num_tokens`: the cache length; `sampler_params`: TOP_P with k 1, i.e. greedy (GREEDY and TOP_K are "not
  implemented" on LiteRT-LM 0.18's CPU sampler);
- `supports_thinking`/`supports_function_calling` false, which `--validate-metadata` requires.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zlib
from pathlib import Path

from edgedistil.errors import EdgeError

LITERTLM_FILE = "model.litertlm"
CONTENT_AS_STRING = (
    "{%- set ns = namespace(messages=[]) -%}{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set ns.messages = ns.messages + [m] -%}"
    "{%- else -%}{%- set ns.messages = ns.messages + [{'role': m['role'], "
    "'content': m['content'] | map(attribute='text') | join('')}] -%}"
    "{%- endif -%}{%- endfor -%}{%- set messages = ns.messages -%}")
# The chat check's user turn: any text works, a question is what an app sends.
CHAT_MESSAGE = "What can you tell me about the sea?"


def _ids(value) -> list[int]:
    return [] if value is None else [int(v) for v in (value if isinstance(value, list) else [value])]


def read_json_if(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def chat_template(model_dir: Path) -> str | None:
    """The folder's chat template: chat_template.jinja (transformers 5) or tokenizer_config.json's entry."""
    path = Path(model_dir) / "chat_template.jinja"
    if path.is_file():
        return path.read_text()
    template = read_json_if(Path(model_dir) / "tokenizer_config.json").get("chat_template")
    return template if isinstance(template, str) else None


def generation_settings(model_dir: Path) -> dict:
    """Start token, stop tokens and chat template, from the folder's tokenizer.json, tokenizer_config.json and
    generation_config.json."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok_cfg = read_json_if(model_dir / "tokenizer_config.json")
    gen_cfg = read_json_if(model_dir / "generation_config.json")
    stop = _ids(gen_cfg.get("eos_token_id"))
    eos = tok_cfg.get("eos_token")
    eos_id = tokenizer.token_to_id(eos) if isinstance(eos, str) else None
    if eos_id is not None and eos_id not in stop:
        stop.append(eos_id)
    if not stop:
        raise EdgeError(f"{model_dir} names no eos token (generation_config.json eos_token_id, tokenizer_config.json "
                        "eos_token)", "add eos_token_id to the teacher's generation_config.json")
    bos_ids = _ids(gen_cfg.get("bos_token_id"))
    encoded = tokenizer.encode("a", add_special_tokens=True).ids
    start = bos_ids[0] if bos_ids and encoded and encoded[0] == bos_ids[0] else None
    return {"start_token": start, "stop_tokens": stop, "chat_template": chat_template(model_dir)}


def llm_metadata(settings: dict, max_len: int):
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    meta = llm_metadata_pb2.LlmMetadata()
    if settings["start_token"] is not None:
        meta.start_token.token_ids.ids.append(settings["start_token"])
    for token in settings["stop_tokens"]:
        meta.stop_tokens.add().token_ids.ids.append(token)
    if settings["chat_template"]:
        meta.jinja_prompt_template = CONTENT_AS_STRING + settings["chat_template"]
    sampler = meta.sampler_params
    sampler.type = sampler.TOP_P
    sampler.k, sampler.p, sampler.temperature, sampler.seed = 1, 1.0, 1.0, 0
    meta.max_num_tokens = max_len
    meta.llm_model_type.generic_model.SetInParent()
    meta.supports_thinking = False
    meta.supports_function_calling = False
    return meta


def build_litertlm(tflite: Path, model_dir: Path, dest: Path, max_len: int) -> dict:
    """Pack `tflite` (prefill_<P> + decode) with model_dir's tokenizer.json and its LlmMetadata into `dest`, read it
    back and return what it holds. Written beside `dest` and renamed, so a failure leaves no partial file."""
    from google.protobuf import text_format
    from litert_lm_builder import litertlm_builder

    settings = generation_settings(model_dir)
    meta = llm_metadata(settings, max_len)
    dest = Path(dest)
    partial = dest.with_name(f".{dest.name}.partial")
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "llm_metadata.pb"
        meta_path.write_bytes(meta.SerializeToString())
        builder = litertlm_builder.LitertLmFileBuilder()
        builder.add_llm_metadata(str(meta_path))
        builder.add_hf_tokenizer(str(Path(model_dir) / "tokenizer.json"))
        builder.add_tflite_model(str(tflite), litertlm_builder.TfLiteModelType.PREFILL_DECODE)
        try:
            with open(partial, "wb") as f:
                builder.build(f, validate_metadata=True)
            partial.replace(dest)
        finally:
            partial.unlink(missing_ok=True)
    contents = read_litertlm(dest)
    want = {"tflite_sha256": _sha256(Path(tflite).read_bytes()),
            "tokenizer_sha256": _sha256((Path(model_dir) / "tokenizer.json").read_bytes()),
            "llm_metadata": text_format.MessageToString(meta)}
    for key, value in want.items():
        if contents[key] != value:
            dest.unlink()
            raise EdgeError(f"{dest.name} read back with a different {key} than was packed",
                            "report it: litert-lm-builder wrote something other than its inputs")
    return {**contents, "stop_tokens": settings["stop_tokens"], "start_token": settings["start_token"],
            "chat_template": settings["chat_template"] is not None, "max_num_tokens": max_len,
            "sampler": "TOP_P k=1 (greedy)"}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_litertlm(path: Path) -> dict:
    """Unpack a .litertlm with litert-lm-builder's own reader: its sections, the sha256 of its .tflite and of its
    (decompressed) tokenizer, and its LlmMetadata as text."""
    from litert_lm_builder import litertlm_builder

    with tempfile.TemporaryDirectory() as tmp:
        try:
            litertlm_builder.unpack(str(path), tmp)
            files = {p.name: p for p in Path(tmp).iterdir()}
            tflite = [p for n, p in files.items() if n.endswith(".tflite")]
            tokenizer = [p for n, p in files.items() if "HF_Tokenizer" in n]
            meta = files.get("LlmMetadataProto.pbtext")
            if len(tflite) != 1 or len(tokenizer) != 1 or meta is None:
                raise EdgeError(f"{path} lacks a section LiteRT-LM needs (found {sorted(files)})",
                                "rebuild it with `edgedistil build --target android --force convert`")
            return {"sections": sorted(n for n in files if n != "model.toml"),
                    "tflite_sha256": _sha256(tflite[0].read_bytes()),
                    # the section is 8 bytes of uncompressed size, then zlib
                    "tokenizer_sha256": _sha256(zlib.decompress(tokenizer[0].read_bytes()[8:])),
                    "llm_metadata": meta.read_text()}
        except EdgeError:
            raise
        except Exception as e:  # the reader raises bare asserts, struct and zlib errors on a damaged file
            raise EdgeError(f"{path} is not a readable .litertlm ({type(e).__name__}: {str(e)[:100]})",
                            "rebuild it with `edgedistil build --target android --force convert`") from None


# ---- checked by LiteRT-LM itself -----------------------------------------------------------------------------


def _matching_prefix(tokenizer, tokens: list[int], text: str) -> int:
    """How many of `tokens` the runtime's `text` reproduces: the longest prefix whose decoding starts `text` (a
    prefix ending inside a UTF-8 character decodes to U+FFFD, so later prefixes are tried too)."""
    return max((n for n in range(len(tokens) + 1) if text.startswith(tokenizer.decode(tokens[:n]))), default=0)


NEAR_TIE_LOGITS = 0.01  # two fp32 logits this close are within kernel rounding (XNNPACK vs PyTorch): a tie


def _compare(tokenizer, reference, prompt_ids: list[int], got_text: str, new_tokens: int, stop: list[int],
             prefill_len: int) -> dict:
    """The fp32 PyTorch model's greedy tokens for `prompt_ids` (cut at the first stop token, which the runtime does
    not print) against the runtime's text, and where they first differ, how close the two tokens were."""
    from edgedistil.decoding import greedy

    want = greedy(reference.step, reference.empty_cache(), prompt_ids, new_tokens, prefill_len, reference.max_len)
    if any(t in stop for t in want):
        want = want[:min(want.index(t) for t in stop if t in want)]
    matching = _matching_prefix(tokenizer, want, got_text)
    text = tokenizer.decode(want)
    out = {"reference_tokens": len(want), "tokens_matching": matching, "text_equal": text == got_text}
    if matching < len(want) or (got_text != text and got_text.startswith(text) and len(want) < new_tokens):
        out["divergence"] = _divergence(tokenizer, reference, prompt_ids, want, matching, got_text, stop,
                                        prefill_len)
    return out


def _divergence(tokenizer, reference, prompt_ids: list[int], want: list[int], at: int, got_text: str,
                stop: list[int], prefill_len: int) -> dict:
    """At the first token where the runtime's text leaves the reference's greedy tokens: the token it chose there
    (its remaining text re-tokenized, or a stop token where its text ends) and how far apart the two were in the
    reference's own logits. A near-tie means kernel rounding picked the other token, not a broken file."""
    from edgedistil.decoding import decode, logit_range, prefill

    logits, cache = prefill(reference.step, reference.empty_cache(), prompt_ids, prefill_len, reference.max_len)
    row = decode(reference.step, cache, want[:at], len(prompt_ids))[0][-1] if at else logits[-1]
    likeliest_stop = [max(stop, key=lambda t: row[t])] if stop else []
    rest = got_text[len(tokenizer.decode(want[:at])):]
    chosen = tokenizer.encode(rest, add_special_tokens=False).ids[:1] if rest else likeliest_stop  # it stopped
    ref_token = want[at] if at < len(want) else likeliest_stop[0]  # here the reference stopped
    record = {"position": at, "reference_token": int(ref_token), "runtime_token": int(chosen[0]) if chosen else None,
              "logit_range": round(logit_range(row), 3)}
    if chosen:
        gap = float(row[ref_token] - row[chosen[0]])
        record.update(logit_gap=round(gap, 6), near_tie=abs(gap) < NEAR_TIE_LOGITS)
    else:
        record["near_tie"] = False
    return record


def check_in_litertlm(path: Path, model_dir: Path, reference, heldout_ids, prefill_len: int, threads: int = 1,
                      new_tokens: int = 32, chat: bool = True) -> dict:
    """Run the shipped .litertlm through LiteRT-LM (CPU) on two held-out prompts, one shorter and one longer than a
    prefill chunk, and (`chat`) one user turn through its chat template; compare its greedy output with
    `reference` (the fp32 PyTorch model, a step function) token for token."""
    from importlib import metadata

    from tokenizers import Tokenizer

    from edgedistil.runtimes.litertlm import LiteRtLmRuntime

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    settings = generation_settings(model_dir)
    runtime = LiteRtLmRuntime(path, threads=threads)
    prompts = []
    try:
        for kind, length in (("held-out text, shorter than one prefill chunk", max(1, prefill_len // 2)),
                             ("held-out text, longer than one prefill chunk", prefill_len + prefill_len // 2 + 1)):
            text = tokenizer.decode([int(t) for t in heldout_ids[:length]])
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            got = runtime.generate(text, new_tokens)
            prompts.append({"kind": kind, "prompt_tokens": len(ids), "runtime_prompt_tokens": got.prompt_tokens,
                            "runtime_tokenizes_alike": runtime.tokenize(text) == ids,
                            "runtime_new_tokens": got.new_tokens,
                            **_compare(tokenizer, reference, ids, got.text, new_tokens, settings["stop_tokens"],
                                       prefill_len)})
        if chat and settings["chat_template"]:
            rendered, reply = runtime.chat(CHAT_MESSAGE, new_tokens)
            ours = _render_chat(model_dir, CHAT_MESSAGE)
            ids = tokenizer.encode(ours, add_special_tokens=False).ids
            prompts.append({"kind": "one user turn through the chat template", "message": CHAT_MESSAGE,
                            "prompt_tokens": len(ids), "rendered_prompt_matches": rendered == ours, "reply": reply,
                            **_compare(tokenizer, reference, ids, reply, new_tokens, settings["stop_tokens"],
                                       prefill_len)})
    finally:
        runtime.close()
    return {"runtime": f"LiteRT-LM {metadata.version('litert-lm-api')} (litert-lm-api Engine, CPU, {threads} "
                       f"thread(s))", "new_tokens": new_tokens,
            "reference": "fp32 PyTorch model, greedy, cut at its first stop token", "prompts": prompts,
            "tokens_matching": sum(p["tokens_matching"] for p in prompts),
            "reference_tokens": sum(p["reference_tokens"] for p in prompts),
            "all_equal": all(p["text_equal"] for p in prompts), "near_tie_logits": NEAR_TIE_LOGITS,
            "teacher_forcing": "not through LiteRT-LM: run_text_scoring's scores did not match the model's "
                               "log-probabilities on an fp32 file; top-1 and KL come from the interpreter on the "
                               "byte-identical .tflite"}


def _render_chat(model_dir: Path, message: str) -> str:
    """The chat prompt as transformers renders the folder's own template (the reference for LiteRT-LM's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))  # local folder; trust_remote_code stays off
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
