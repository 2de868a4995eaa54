"""EdgeLM against transformers' own Llama / Qwen2, its static-cache step, and HF-folder I/O."""

import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from edgedistil.errors import EdgeError
from edgedistil.model import EdgeConfig, EdgeLM, load_hf_folder, read_hf_config, save_hf_folder

TOL = 1e-4
BASE = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    attn_implementation="eager",  # compare against HF's eager math, not the same SDPA kernel we use
)
CASES = {
    "llama_gqa_untied": (LlamaConfig, LlamaForCausalLM, dict(rope_theta=500000.0)),
    "llama_tied_mha": (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama_head_dim_bias": (LlamaConfig, LlamaForCausalLM, dict(head_dim=12, attention_bias=True)),
    "qwen2_qkv_bias_tied": (Qwen2Config, Qwen2ForCausalLM, dict(rope_theta=1e6, tie_word_embeddings=True)),
}


def _randomize(model, seed):
    # HF's init (std 0.02, norms at 1, zero biases) makes every model look alike; use weights that matter.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.2 * noise)


def make_hf(case, folder, seed=0, **extra):
    cfg_cls, model_cls, kw = CASES[case]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**BASE, **kw, **extra})).eval()
    _randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def ids(b, t, seed=1, vocab=61):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    hf = make_hf("llama_gqa_untied", folder)
    return folder, hf, load_hf_folder(folder)


@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_forward_matches_transformers(case, tmp_path):
    hf = make_hf(case, tmp_path)
    model = load_hf_folder(tmp_path)
    x = ids(3, 11)
    ref = hf(x, output_hidden_states=True)
    logits, hidden = model(x, output_hidden_states=True)
    assert logits.shape == (3, 11, 61)
    assert (logits - ref.logits).abs().max() <= TOL
    assert len(hidden) == len(ref.hidden_states) == hf.config.num_hidden_layers + 1
    for ours, theirs in zip(hidden, ref.hidden_states):
        assert (ours - theirs).abs().max() <= TOL
    # Same parameter names as the checkpoint, and the tie is a real tie.
    assert set(load_file(tmp_path / "model.safetensors")) <= set(model.state_dict())
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == hf.config.tie_word_embeddings


def test_config_fields_from_transformers_4_and_5_dicts():
    v5 = {**{k: v for k, v in BASE.items() if k != "attn_implementation"}, "model_type": "llama"}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"} | {"rope_theta": 5e5, "rope_scaling": None}
    a, b = EdgeConfig.from_hf_dict(v5), EdgeConfig.from_hf_dict(v4)
    assert a == b
    assert (a.rope_theta, a.head_dim, a.num_key_value_heads, a.attention_bias) == (5e5, 8, 2, False)
    no_kv = {k: v for k, v in v4.items() if k != "num_key_value_heads"}
    assert EdgeConfig.from_hf_dict(no_kv).num_key_value_heads == 4
    q = EdgeConfig.from_hf_dict({**v4, "model_type": "qwen2", "attention_bias": False})
    assert q.attention_bias and not q.o_proj_bias  # qwen2: q/k/v bias always, o_proj never


def _bad(**changes):
    d = {k: v for k, v in BASE.items() if k != "attn_implementation"} | {"model_type": "llama"}
    d.update(changes)
    return {k: v for k, v in d.items() if v is not ...}


@pytest.mark.parametrize(
    "d, named",
    [
        (_bad(model_type="gpt2"), "'gpt2'"),
        (_bad(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "'llama3'"),
        (_bad(rope_scaling={"type": "linear", "factor": 2.0}), "'linear'"),
        (_bad(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6}), "'yarn'"),
        (_bad(hidden_act="gelu"), "'gelu'"),
        (_bad(mlp_bias=True), "mlp_bias"),
        (_bad(model_type="qwen2", use_sliding_window=True), "use_sliding_window"),
        (_bad(intermediate_size=...), "'intermediate_size'"),
    ],
)
def test_unsupported_configs_refused_in_one_line(d, named):
    with pytest.raises(EdgeError) as e:
        EdgeConfig.from_hf_dict(d)
    msg = str(e.value)
    assert named in msg and "\n" not in msg
    if "missing" not in msg and "lacks" not in msg:
        assert "llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM)" in msg


def test_unsupported_architecture_refused_through_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(EdgeError, match="model_type 'gpt2' is not supported"):
        load_hf_folder(tmp_path)


def test_config_json_missing_or_broken(tmp_path):
    with pytest.raises(EdgeError, match="--teacher PATH"):
        read_hf_config(tmp_path / "nope")
    with pytest.raises(EdgeError, match="has no config.json"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EdgeError, match="not valid JSON"):
        read_hf_config(tmp_path)


@torch.no_grad()
def test_step_token_by_token_equals_forward(teacher):
    _, _, model = teacher
    x = ids(1, 12, seed=2)
    full = model(x)
    k, v = model.empty_cache(16)
    for t in range(x.shape[1]):
        pos = torch.tensor([t], dtype=torch.int32)
        logits, k, v = model.step(x[:, t : t + 1].int(), pos, k, v)
        assert (logits[0, 0] - full[0, t]).abs().max() <= TOL, t
    assert k.shape == (2, 1, 2, 16, 8)
    assert k[:, :, :, 12:].abs().max() == 0  # nothing written past the last position


@torch.no_grad()
def test_chunked_prefill_with_padding_then_decode(teacher):
    _, _, model = teacher
    prompt, chunk, n_new = 9, 4, 2
    x = ids(1, prompt + n_new, seed=3)
    full = model(x)
    # Last chunk holds position 8 plus padding at 9, 10, 11; slot 11 is past the cache end, so that write drops.
    k, v = model.empty_cache(prompt + n_new)
    rows = []
    for start in range(0, prompt, chunk):
        piece = x[:, start : min(start + chunk, prompt)]
        real = piece.shape[1]
        padded = torch.cat([piece, torch.zeros(1, chunk - real, dtype=piece.dtype)], dim=1)
        logits, k, v = model.step(padded, torch.tensor([start]), k, v)
        assert logits.shape == (1, chunk, 61)
        rows.append(logits[0, :real])
    assert (torch.cat(rows) - full[0, :prompt]).abs().max() <= TOL
    for t in range(prompt, prompt + n_new):
        logits, k, v = model.step(x[:, t : t + 1], torch.tensor([t]), k, v)
        assert (logits[0, 0] - full[0, t]).abs().max() <= TOL, t


@torch.no_grad()
def test_step_refuses_cache_longer_than_rope_table(teacher):
    _, _, model = teacher
    k, v = model.empty_cache(model.rope_cos.shape[0] + 1)
    with pytest.raises(EdgeError, match="RoPE table"):
        model.step(ids(1, 1), torch.tensor([0]), k, v)


@pytest.mark.parametrize("case", ["llama_tied_mha", "qwen2_qkv_bias_tied", "llama_head_dim_bias"])
@torch.no_grad()
def test_save_loads_in_transformers_and_student_round_trips(case, tmp_path):
    make_hf(case, tmp_path / "t")
    (tmp_path / "t" / "tokenizer.json").write_text('{"fake": true}')
    teacher = load_hf_folder(tmp_path / "t")
    x = ids(2, 9, seed=4)

    save_hf_folder(teacher, tmp_path / "copy", tokenizer_from=tmp_path / "t")
    assert (tmp_path / "copy" / "tokenizer.json").read_text() == '{"fake": true}'
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "copy", attn_implementation="eager").eval()
    assert (hf(x).logits - teacher(x)).abs().max() <= TOL

    # A student: one layer, fresh weights, same family; HF and our loader both read it back.
    torch.manual_seed(5)
    student = EdgeLM(dataclasses.replace(teacher.cfg, num_hidden_layers=1))
    _randomize(student, 5)
    save_hf_folder(student, tmp_path / "student", config_overrides={"bos_token_id": 7})
    cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["bos_token_id"] == 7 and "quantization_config" not in cfg
    assert cfg["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[cfg["model_type"]]]
    keys = set(load_file(tmp_path / "student" / "model.safetensors"))
    assert ("lm_head.weight" in keys) == (not student.cfg.tie_word_embeddings)
    hf_student = AutoModelForCausalLM.from_pretrained(tmp_path / "student", attn_implementation="eager").eval()
    assert hf_student.config.num_hidden_layers == 1
    assert (hf_student(x).logits - student(x)).abs().max() <= TOL
    again = load_hf_folder(tmp_path / "student")
    assert again.cfg == student.cfg
    assert (again(x) - student(x)).abs().max() == 0


def test_truncated_safetensors_named(tmp_path):
    make_hf("llama_gqa_untied", tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(EdgeError) as e:
        load_hf_folder(tmp_path)
    assert "model.safetensors" in str(e.value) and "re-download or re-export" in str(e.value)


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, monkeypatch):
    hf = make_hf("llama_gqa_untied", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")

    def boom(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    for mod, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(mod, name, boom)
    with pytest.raises(EdgeError) as e:
        load_hf_folder(tmp_path)
    assert "pytorch_model.bin" in str(e.value) and "only *.safetensors" in str(e.value)


def test_weight_mismatch_names_first_key(tmp_path):
    make_hf("llama_gqa_untied", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(EdgeError, match=r"\d+ missing \(first: model\.layers\.2\."):
        load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
    with pytest.raises(EdgeError, match=r"weight model\.layers\.0\.mlp\.\w+_proj\.weight .* has shape"):
        load_hf_folder(tmp_path)


def test_forward_bf16_autocast_close_to_fp32(teacher):
    _, _, model = teacher
    x = ids(2, 10, seed=6)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    # Gradients flow under autocast too (the training path).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().logsumexp(-1).mean().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    model.zero_grad(set_to_none=True)
