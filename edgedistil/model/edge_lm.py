"""A Llama-type decoder (Llama, Qwen2) with a static KV cache, written to mirror HF transformers' weights and math.

Parameter names equal the HF safetensors keys, so teacher checkpoints load by name and students save back into a
folder that `AutoModelForCausalLM.from_pretrained` reads. Two entry points:

- `forward(input_ids[B,T])`: full causal attention, no cache. Training and eval.
- `step(input_ids[1,T], position[1], k_cache, v_cache)`: prefill/decode against a fixed-size cache. This is the
  graph that is exported to ONNX / Core ML / LiteRT, so it has static shapes apart from T and no Python control flow
  on tensor values (the cache write is a one-hot matmul, the mask is arithmetic), like shared/probes/tinylm.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgedistil.decoding import HEAD_FLOOR
from edgedistil.errors import EdgeError

SUPPORTED = "llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM)"
_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# HF class defaults, used when a config.json leaves the key out (HF would fill in the same value).
_DEFAULT_MAX_POS = {"llama": 2048, "qwen2": 32768}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Large enough that exp() of a masked score is exactly 0 in fp32, small enough not to overflow fp16 (-1e9 does).
_MASK_NEG = 1e4


def _refuse(what: str, only: str = "") -> EdgeError:
    return EdgeError(
        f"{what} is not supported (supported: {SUPPORTED}{', ' + only if only else ''})",
        "pick a teacher that is a plain Llama or Qwen2 causal LM",
    )


@dataclass(frozen=True)
class EdgeConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    attention_bias: bool  # bias on q/k/v (and on o_proj for llama, as HF does)
    max_position_embeddings: int
    hf_config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def o_proj_bias(self) -> bool:
        # Qwen2 has q/k/v bias but never an o_proj bias; HF Llama uses attention_bias for all four.
        return self.attention_bias and self.model_type == "llama"

    @classmethod
    def from_hf_dict(cls, d: dict) -> "EdgeConfig":
        mt = d.get("model_type")
        if mt not in _ARCH:
            raise _refuse(f"model_type {mt!r}")
        missing = [k for k in _REQUIRED if d.get(k) is None]
        if missing:
            raise EdgeError(
                f"{mt} config.json lacks required key {missing[0]!r}",
                "use the config.json that came with the checkpoint",
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise _refuse(f"hidden_act {act!r} in a {mt} config", "with hidden_act silu only")
        if d.get("mlp_bias"):
            raise _refuse(f"mlp_bias=true in a {mt} config", "without MLP bias")
        if mt == "qwen2" and d.get("use_sliding_window"):
            raise _refuse("qwen2 with use_sliding_window=true", "with full attention only")

        # transformers 4.x: rope_theta + rope_scaling; 5.x: rope_parameters {rope_type, rope_theta, ...}.
        rp = d.get("rope_parameters") or {}
        rs = d.get("rope_scaling") or {}
        rope_type = rp.get("rope_type") or rs.get("rope_type") or rs.get("type") or "default"
        if rope_type != "default":
            raise _refuse(f"rope type {rope_type!r} in a {mt} config", "with default RoPE only")
        if rp.get("partial_rotary_factor", 1.0) != 1.0:
            raise _refuse(f"partial_rotary_factor {rp['partial_rotary_factor']} in a {mt} config", "with full RoPE only")
        theta = rp.get("rope_theta", d.get("rope_theta", 10000.0))

        heads = int(d["num_attention_heads"])
        kv = int(d.get("num_key_value_heads") or heads)
        if heads % kv:
            raise EdgeError(
                f"{mt} config.json has num_attention_heads={heads} not divisible by num_key_value_heads={kv}",
                "use the config.json that came with the checkpoint",
            )
        return cls(
            model_type=mt,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if mt == "qwen2" else bool(d.get("attention_bias", False)),
            max_position_embeddings=int(d.get("max_position_embeddings") or _DEFAULT_MAX_POS[mt]),
            hf_config=dict(d),
        )

    def to_hf_dict(self, **overrides) -> dict:
        """config.json for this config, starting from the teacher's dict so unrelated keys (token ids...) survive.

        The dataclass fields win over hf_config (a student made with dataclasses.replace has fewer layers), and
        `overrides` win over both.
        """
        d = dict(self.hf_config)
        for k in ("quantization_config", "auto_map"):  # weights are no longer quantized; no remote code is shipped
            d.pop(k, None)
        d.update(
            model_type=self.model_type,
            architectures=[_ARCH[self.model_type]],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
        )
        if self.model_type == "llama":
            d["attention_bias"] = self.attention_bias
        # Keep the rope spelling of the source (4.x vs 5.x); both versions read either.
        if isinstance(d.get("rope_parameters"), dict):
            d["rope_parameters"] = {**d["rope_parameters"], "rope_type": "default", "rope_theta": self.rope_theta}
        else:
            d["rope_theta"] = self.rope_theta
            d["rope_scaling"] = None
        d.update(overrides)
        # Qwen2's per-layer list must match the layer count or transformers rejects / mis-indexes it.
        if "layer_types" in d:
            d["layer_types"] = ["full_attention"] * int(d["num_hidden_layers"])
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x):
        # Same op order as HF: normalise in fp32, cast back, then scale, so bf16 results match bit for bit.
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep: int):
    """[B, KV, S, D] -> [B, KV*n_rep, S, D], each kv head repeated for its group of query heads (as HF)."""
    if n_rep == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


class Attention(nn.Module):
    def __init__(self, cfg: EdgeConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv * self.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=cfg.o_proj_bias)

    def qkv(self, x, cos, sin):
        """Projected, rotated q [B,H,T,D] and k, v [B,KV,T,D]. cos/sin broadcast as [.., T, D]."""
        b = x.shape[0]
        # -1 for T rather than a Python int so the ONNX trace keeps T dynamic.
        q = self.q_proj(x).view(b, -1, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, -1, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, -1, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def out(self, y):
        b = y.shape[0]
        return self.o_proj(y.transpose(1, 2).reshape(b, -1, self.n_head * self.head_dim))

    def forward(self, x, cos, sin):
        q, k, v = self.qkv(x, cos, sin)
        rep = self.n_head // self.n_kv
        y = F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), is_causal=True)
        return self.out(y)


class MLP(nn.Module):
    def __init__(self, cfg: EdgeConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: EdgeConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class EdgeLM(nn.Module):
    def __init__(self, cfg: EdgeConfig, max_len: int | None = None):
        super().__init__()
        self.cfg = cfg
        # `model.` prefix so state_dict keys are the HF keys.
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # set by trim_head: lm_head then has K rows, and logits() spreads them back to the whole vocabulary
        self.register_buffer("head_index", None, persistent=False)
        self.register_buffer("head_floor", None, persistent=False)
        self.max_len = max_len or min(cfg.max_position_embeddings, 4096)
        self.build_rope()

    def logits(self, hidden):
        """The LM head: [.., hidden] -> [.., vocab]. A trimmed head computes its K rows and reads each id's logit
        from them (a Gather; an id outside them reads row 0 and gets HEAD_FLOOR added): every runtime still sees a
        full-vocabulary row, with probability 0 outside the kept ids."""
        x = self.lm_head(hidden)
        if self.head_index is None:
            return x
        return x.index_select(-1, self.head_index) + self.head_floor.to(x.dtype)

    def trim_head(self, kept_ids) -> "EdgeLM":
        """Keep only the output head's rows `kept_ids` (sorted, unique token ids): a decode step reads K rows of
        the vocabulary matrix instead of all of them, and the other ids are never produced. The embedding stays
        whole, so every id can still be read; the head becomes its own [K, hidden] matrix (untied)."""
        kept = torch.as_tensor(kept_ids, dtype=torch.long)
        vocab = self.cfg.vocab_size
        if kept.ndim != 1 or not len(kept) or int(kept.min()) < 0 or int(kept.max()) >= vocab or \
                bool((kept[1:] <= kept[:-1]).any()):
            raise EdgeError(f"a trimmed head needs sorted, unique token ids in [0, {vocab}), got {len(kept)} ids",
                            "rebuild the student's head_rows.json with `edgedistil distill`")
        weight = self.lm_head.weight.detach()[kept].clone()
        self.lm_head = nn.Linear(self.cfg.hidden_size, len(kept), bias=False, device=weight.device,
                                 dtype=weight.dtype)
        self.lm_head.weight = nn.Parameter(weight, requires_grad=False)
        index = torch.zeros(vocab, dtype=torch.long)
        index[kept] = torch.arange(len(kept))
        floor = torch.full((vocab,), HEAD_FLOOR, dtype=torch.float32)
        floor[kept] = 0.0
        self.head_index, self.head_floor = index.to(weight.device), floor.to(weight.device)
        self.cfg = replace(self.cfg, tie_word_embeddings=False)
        return self

    @property
    def head_rows(self) -> int:
        return self.lm_head.weight.shape[0]

    def build_rope(self, device=None):
        """(Re)compute the cos/sin tables; call after materialising a model built on the meta device."""
        d = self.cfg.head_dim
        # Computed exactly as HF's default RoPE (fp32 outer product, then cat) so logits match to fp32 rounding.
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
        freqs = torch.arange(self.max_len, device=device).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_len, D]
        # Non-persistent: derived from the config, and absent from HF checkpoints.
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)

    def forward(self, input_ids, output_hidden_states: bool = False):
        """Logits [B,T,V] for positions 0..T-1 with full causal attention.

        With output_hidden_states, also returns a list of num_hidden_layers+1 tensors [B,T,hidden]: the embeddings,
        then each layer's output, where (as in HF) the last entry is taken after the final norm.
        """
        hidden = self.hidden_states(input_ids)
        logits = self.logits(hidden[-1])
        return (logits, hidden) if output_hidden_states else logits

    def hidden_states(self, input_ids) -> list:
        """The embeddings and every layer's output [B,T,hidden], the last after the final norm: what the LM head
        reads. Scoring calls it to apply the head only at the positions it needs (the head is a fifth of SmolLM2)."""
        t = input_ids.shape[1]
        if t > self.rope_cos.shape[0]:
            raise EdgeError(
                f"sequence of {t} tokens is longer than the model's RoPE table ({self.rope_cos.shape[0]})",
                "use shorter sequences or build the model with a larger max_len",
            )
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.model.embed_tokens(input_ids)
        hidden = [x]
        for layer in self.model.layers:
            x = layer(x, cos, sin)
            hidden.append(x)
        hidden[-1] = self.model.norm(x)
        return hidden

    def step(self, input_ids, position, k_cache, v_cache):
        """Run tokens input_ids[0, :] at absolute positions position..position+T-1 against a static KV cache.

        Caches are [layers, 1, kv_heads, S, head_dim]; returns (logits [1,T,V], k_cache', v_cache') with those
        positions written. Writes to positions >= S are dropped, so a zero-padded last prefill chunk is harmless
        as long as its rows' logits are ignored.
        """
        layers = range(len(self.model.layers))
        logits, new_k, new_v = self.step_layers(input_ids, position, [k_cache[i] for i in layers],
                                                [v_cache[i] for i in layers])
        return logits, torch.stack(new_k), torch.stack(new_v)

    def step_layers(self, input_ids, position, k_caches, v_caches):
        """`step` with one cache tensor per layer ([1, kv_heads, S, head_dim] each), as LiteRT-LM's signatures take
        them; returns (logits [1,T,V], new k list, new v list)."""
        s = k_caches[0].shape[2]
        # Shape-only check; skipped while tracing for export, where it would only add a TracerWarning.
        if not torch.jit.is_tracing() and s > self.rope_cos.shape[0]:
            raise EdgeError(
                f"KV cache holds {s} positions but the RoPE table only {self.rope_cos.shape[0]}",
                f"build the model with max_len >= {s} or use a smaller cache",
            )
        ids = input_ids.long()
        # cumsum of ones rather than arange(T): T stays a graph input instead of a traced constant.
        positions = position.long().reshape(1) + torch.ones_like(ids[0]).cumsum(0) - 1  # [T]
        # Rows past the table (padding only) read its last entry instead of failing in Gather.
        rope_pos = positions.clamp(max=self.rope_cos.shape[0] - 1)
        cos, sin = self.rope_cos[rope_pos], self.rope_sin[rope_pos]

        slots = torch.arange(s, device=ids.device)
        write = (slots[None, :] == positions[:, None]).to(k_caches[0].dtype)  # [T,S] one-hot rows
        keep = (1.0 - write.sum(0))[None, None, :, None]  # [1,1,S,1]: 0 where a slot is overwritten
        # GQA without copying the cache per head: the `rep` query heads sharing a kv head are stacked along the
        # row axis ([KV, rep*T, D], rows ordered (r, t)), so the mask rows repeat positions rep times.
        rep = self.cfg.num_attention_heads // self.cfg.num_key_value_heads
        allowed = slots[None, :] <= positions.repeat(rep)[:, None]  # [rep*T, S]
        mask = (allowed.float() - 1.0) * _MASK_NEG  # 0 allowed, -1e4 not; arithmetic, no where/-inf

        x = self.model.embed_tokens(ids)
        new_k, new_v = [], []
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            q, k, v = attn.qkv(layer.input_layernorm(x), cos, sin)
            kc = k_caches[i] * keep + torch.einsum("ts,bhtd->bhsd", write, k.to(k_caches[i].dtype))
            vc = v_caches[i] * keep + torch.einsum("ts,bhtd->bhsd", write, v.to(v_caches[i].dtype))
            new_k.append(kc)
            new_v.append(vc)
            # Batch 1 is dropped so these are 3-D matmuls, and sizes are constants or -1: T stays dynamic in the
            # ONNX trace, and torch.export can prove the reshapes valid for every T (4-D versions it cannot).
            kv, hd = attn.n_kv, attn.head_dim
            qg = q[0].reshape(kv, -1, hd)  # [KV, rep*T, D]; head g*rep+r -> group g
            scores = (qg @ kc[0].to(q.dtype).transpose(-1, -2)) * (hd**-0.5) + mask.to(q.dtype)
            # Softmax in fp32 as HF's eager path does; a no-op for fp32 graphs.
            y = scores.float().softmax(-1).to(q.dtype) @ vc[0].to(q.dtype)  # [KV, rep*T, D]
            y = y.reshape(kv, rep, -1, hd).permute(2, 0, 1, 3).reshape(1, -1, attn.n_head * hd)  # [1,T,H*D]
            x = x + attn.o_proj(y)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.logits(self.model.norm(x))
        return logits, new_k, new_v

    def empty_cache(self, max_len: int, dtype=torch.float32):
        c = self.cfg
        shape = (len(self.model.layers), 1, c.num_key_value_heads, max_len, c.head_dim)
        dev = self.model.embed_tokens.weight.device
        return torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev)

