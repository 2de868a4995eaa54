"""EdgeLM as Core ML wants to trace it: the KV cache lives in registered buffers that become Core ML states.

`EdgeLM.step` takes the cache as inputs and writes it with a one-hot matmul, which suits ONNX and LiteRT. Core ML's
stateful models (iOS 18, `ct.StateType`) need the cache as fp16 `register_buffer`s updated in place, and a slice
write `k_cache[i, :, :, p:p+T] = k` touches T rows instead of rewriting the whole cache every step. Everything else
(embedding, norms, q/k/v projections with RoPE, o_proj, MLP, head, RoPE tables, the arithmetic -1e4 mask and the
GQA stacking) is EdgeLM's own modules and the same math as `EdgeLM.step`; tests/test_ios.py proves the two agree.

`StatelessStep` is the iOS 17 fallback: the same math with the cache as inputs and outputs. RMSNorm is rescaled
so x^2 cannot overflow fp16 (`rms_norm_fp16_safe`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgedistil.model import EdgeLM

MASK_NEG = 1e4  # as EdgeLM: exp() of a masked score is 0 in fp32, and -1e4 does not overflow fp16 as -1e9 does


def rms_norm_fp16_safe(norm, x):
    """EdgeLM's RMSNorm, rescaled so it cannot overflow in fp16: x^2 overflows above 256, and a distilled SmolLM2's
    residual stream reaches ~260. With s = max(|x|, 1) per row, (x/s) * rsqrt(mean((x/s)^2) + eps/s^2) is the same
    value, and (x/s)^2 <= 1."""
    s = x.abs().amax(-1, keepdim=True).clamp(min=1.0)
    h = x / s
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon / (s * s))
    return norm.weight * h


def run_layers(model: EdgeLM, input_ids, position, k_cache, v_cache):
    """Logits [1,T,V] for input_ids at positions position..position+T-1; writes those rows of k_cache/v_cache
    ([layers, 1, kv_heads, S, head_dim]) in place with a slice. The caller keeps position + T <= S
    (edgedistil.decoding.prefill refuses prompts that would not fit)."""
    cfg = model.cfg
    t, s = input_ids.shape[1], k_cache.shape[3]
    p = position[0]
    positions = position.long() + torch.arange(t)  # [T]; T is fixed per traced function (prefill P, decode 1)
    rope_pos = positions.clamp(max=model.rope_cos.shape[0] - 1)
    cos, sin = model.rope_cos[rope_pos], model.rope_sin[rope_pos]
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    slots = torch.arange(s)
    allowed = slots[None, :] <= positions.repeat(rep)[:, None]  # [rep*T, S], rows ordered (r, t) as in EdgeLM
    mask = (allowed.float() - 1.0) * MASK_NEG  # arithmetic: a where() with flexible shapes mis-types in MIL

    x = model.model.embed_tokens(input_ids.long())
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        q, k, v = attn.qkv(rms_norm_fp16_safe(layer.input_layernorm, x), cos, sin)
        k_cache[i, :, :, p:p + t, :] = k.to(k_cache.dtype)
        v_cache[i, :, :, p:p + t, :] = v.to(v_cache.dtype)
        kc, vc = k_cache[i, 0].to(q.dtype), v_cache[i, 0].to(q.dtype)  # [KV, S, D]
        kv, hd = attn.n_kv, attn.head_dim
        qg = q[0].reshape(kv, rep * t, hd)  # [KV, rep*T, D]: head g*rep+r -> group g
        scores = (qg @ kc.transpose(-1, -2)) * (hd**-0.5) + mask.to(q.dtype)
        y = scores.float().softmax(-1).to(q.dtype) @ vc
        y = y.reshape(kv, rep, t, hd).permute(2, 0, 1, 3).reshape(1, t, attn.n_head * hd)
        x = x + attn.o_proj(y)
        x = x + layer.mlp(rms_norm_fp16_safe(layer.post_attention_layernorm, x))
    return model.logits(rms_norm_fp16_safe(model.model.norm, x))


class StatefulStep(nn.Module):
    """forward(input_ids[1,T] int32, position[1] int32) -> logits [1,T,V], with the cache in the k_cache/v_cache
    buffers, which ct.convert turns into Core ML states (iOS 18)."""

    def __init__(self, model: EdgeLM, max_len: int, cache_dtype: torch.dtype = torch.float16):
        super().__init__()
        self.model = model.eval()
        c = model.cfg
        shape = (c.num_hidden_layers, 1, c.num_key_value_heads, max_len, c.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=cache_dtype))
        self.register_buffer("v_cache", torch.zeros(shape, dtype=cache_dtype))
        self.max_len = max_len

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()

    def forward(self, input_ids, position):
        return run_layers(self.model, input_ids, position, self.k_cache, self.v_cache)


class StatelessStep(nn.Module):
    """The iOS 17 fallback (no Core ML states): (input_ids, position, k_cache, v_cache) -> (logits, k', v'),
    the same slice-written math on a copy of the cache that goes in."""

    def __init__(self, model: EdgeLM):
        super().__init__()
        self.model = model.eval()

    def forward(self, input_ids, position, k_cache, v_cache):
        k, v = k_cache.clone(), v_cache.clone()
        logits = run_layers(self.model, input_ids, position, k, v)
        return logits, k, v


class StatefulTorchLM:
    """StatefulStep as a step function (edgedistil.decoding), so its PyTorch numbers can be compared like any
    runtime's. The cache object is the module's own buffers; empty_cache() zeroes them."""

    def __init__(self, model: EdgeLM, max_len: int, cache_dtype: torch.dtype = torch.float32):
        self.module = StatefulStep(model, max_len, cache_dtype)
        self.max_len = max_len

    def empty_cache(self):
        self.module.reset()
        return self.module

    @torch.no_grad()
    def step(self, ids: list[int], position: int, cache):
        logits = self.module(torch.tensor([ids], dtype=torch.int32), torch.tensor([position], dtype=torch.int32))
        return logits[0].float().numpy(), cache
