"""The in-place cache layout for ONNX Runtime: an ONNX graph built op by op around GroupQueryAttention.

The traced graph (`export/onnx.py`, layout "full") takes the whole cache in and gives it back every step, so each
token copies every layer's cache twice. Here each layer has its own cache tensor, `past_key_values.{i}.key|value`
`[1, kv_heads, max_len, head_dim]`, and ORT's `GroupQueryAttention` (com.microsoft) writes the new positions into
`present.{i}.key|value`. Bound to the same buffer (I/O binding, as onnxruntime-genai does with
past_present_share_buffer), the cache is updated in place: nothing but the new rows moves. RoPE runs inside the op
(do_rotary, non-interleaved as Llama's rotate_half), so positions follow from `position` alone.

Two I/O conventions (`io`):
- "edgedistil": `input_ids` int32 [1, T] (T = P for prefill, 1 for decode) and `position` int32 [1], caches
  `[1, kv_heads, max_len, head_dim]`: our Python loop's.
- "hf": the Hugging Face ONNX layout that Transformers.js, onnxruntime-genai and Optimum feed as it is
  (shared/notes/consumers.md): `input_ids` and `attention_mask` int64 `[batch_size, ...]`, caches
  `[batch_size, kv_heads, past_sequence_length, head_dim]` with numeric kv_heads and head_dim (Transformers.js
  builds the empty first past from them). seqlens_k and total_sequence_length are computed inside the graph from
  attention_mask, as onnxruntime-genai's model builder does, since any extra input breaks Transformers.js and
  Optimum. A consumer may grow the cache (past of length P in, P + T out) or share one max_len buffer per layer. The tied embedding is stored once, as the LM head's [hidden, vocab] matrix; the embedding
lookup gathers its columns (Gather axis 1, then a small transpose of the [hidden, 1, T] result). As in
onnxruntime-genai's graphs, q/k/v are one MatMul whose packed output GroupQueryAttention splits itself, and
gate/up are one MatMul and a Split: a decode step is four weight MatMuls per layer instead of seven.
"""

from __future__ import annotations

import numpy as np

from edgedistil.model import EdgeLM

GQA_OPSET = 17


def cache_names(layers: int) -> list[tuple[str, str, str, str]]:
    """(past key, past value, present key, present value) names per layer."""
    return [(f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")
            for i in range(layers)]


IO_CONVENTIONS = ("edgedistil", "hf")


def build_gqa_graph(model: EdgeLM, max_len: int, io: str = "edgedistil"):
    """An onnx.ModelProto of `model`'s step with per-layer caches updated by GroupQueryAttention, with the inputs
    of the `io` convention (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    if io not in IO_CONVENTIONS:
        raise ValueError(f"io must be one of {IO_CONVENTIONS}, got {io!r}")
    c = model.cfg
    tokens = ["batch_size", "sequence_length"] if io == "hf" else [1, "T"]
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op, inputs, name, domain="", n_out=1, **attrs):
        outs = [f"{name}/out{i}" for i in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(x, prefixes, name):
        """One MatMul for the linears `prefixes` side by side (their outputs concatenated on the last axis)."""
        w = np.concatenate([sd[f"{p}.weight"] for p in prefixes], axis=0).T  # [in, sum of outs]
        y = node("MatMul", [x, init(f"{name}.weight.T", w)], f"/{name}/MatMul")
        if any(f"{p}.bias" in sd for p in prefixes):  # Qwen2's q/k/v have biases, Llama's none
            b = np.concatenate([sd.get(f"{p}.bias", np.zeros(sd[f"{p}.weight"].shape[0], np.float32))
                                for p in prefixes])
            y = node("Add", [y, init(f"{name}.bias", b)], f"/{name}/Add")
        return y

    def rmsnorm(x, prefix, name):
        # standard ops in the pattern ORT fuses into SimplifiedLayerNormalization (and onnx.checker accepts)
        ms = node("ReduceMean", [node("Pow", [x, "/two"], f"{name}/Pow")], f"{name}/ReduceMean", axes=[-1])
        rms = node("Sqrt", [node("Add", [ms, "/eps"], f"{name}/Add")], f"{name}/Sqrt")
        return node("Mul", [node("Div", [x, rms], f"{name}/Div"), init(f"{prefix}.weight", sd[f"{prefix}.weight"])],
                    f"{name}/Mul")

    init("/two", np.array(2.0, np.float32))
    init("/eps", np.array(c.rms_norm_eps, np.float32))
    split = init("/gate_up_split", np.array([c.intermediate_size, c.intermediate_size], np.int64))

    # ---- positions: GQA wants seqlens_k = total - 1 [B] and total_sequence_length (scalar)
    if io == "hf":
        seqlens_k, total_scalar = hf_sequence_lengths(node, init)
    else:
        seqlens_k, total_scalar = position_sequence_lengths(node, init, nodes)

    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.int64).astype(np.float32) / c.head_dim))
    freqs = np.arange(max_len, dtype=np.float32)[:, None] * inv_freq[None, :]  # [max_len, D/2]
    cos, sin = init("/rope_cos", np.cos(freqs)), init("/rope_sin", np.sin(freqs))

    head = sd["lm_head.weight"].T  # [hidden, vocab] (K rows trimmed), shared with the embedding when tied
    head_name = init("lm_head.weight.T", head)
    if c.tie_word_embeddings:
        cols = node("Gather", [head_name, "input_ids"], "/embed_tokens/Gather", axis=1)  # [hidden, 1, T]
        x = node("Transpose", [cols], "/embed_tokens/Transpose", perm=[1, 2, 0])
    else:
        x = node("Gather", [init("model.embed_tokens.weight", sd["model.embed_tokens.weight"]), "input_ids"],
                 "/embed_tokens/Gather")

    typed = []
    for i, (pk, pv, nk, nv) in enumerate(cache_names(c.num_hidden_layers)):
        p = f"model.layers.{i}"
        h = rmsnorm(x, f"{p}.input_layernorm", f"/layers.{i}/input_layernorm")
        qkv = linear(h, [f"{p}.self_attn.{n}_proj" for n in "qkv"], f"layers.{i}/qkv_proj")
        y, _, _ = node("GroupQueryAttention", [qkv, "", "", pk, pv, seqlens_k, total_scalar, cos, sin],
                       f"/layers.{i}/GroupQueryAttention", domain="com.microsoft", n_out=3,
                       num_heads=c.num_attention_heads, kv_num_heads=c.num_key_value_heads,
                       scale=float(c.head_dim ** -0.5), do_rotary=1, rotary_interleaved=0)
        nodes[-1].output[1], nodes[-1].output[2] = nk, nv
        # declared, since shape inference cannot see through a contrib op (the quantizers need the types)
        typed.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [*tokens, c.num_attention_heads * c.head_dim]))
        x = node("Add", [x, linear(y, [f"{p}.self_attn.o_proj"], f"layers.{i}/o_proj")], f"/layers.{i}/attn_residual")
        h = rmsnorm(x, f"{p}.post_attention_layernorm", f"/layers.{i}/post_attention_layernorm")
        gate_up = linear(h, [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"], f"layers.{i}/mlp/gate_up_proj")
        gate, up = node("Split", [gate_up, split], f"/layers.{i}/mlp/Split", n_out=2, axis=-1)
        act = node("Mul", [gate, node("Sigmoid", [gate], f"/layers.{i}/mlp/Sigmoid")], f"/layers.{i}/mlp/silu")
        down = linear(node("Mul", [act, up], f"/layers.{i}/mlp/Mul"), [f"{p}.mlp.down_proj"],
                      f"layers.{i}/mlp/down_proj")
        x = node("Add", [x, down], f"/layers.{i}/mlp_residual")
    x = rmsnorm(x, "model.norm", "/norm")
    if model.head_index is None:
        nodes.append(helper.make_node("MatMul", [x, head_name], ["logits"], name="/lm_head/MatMul"))
    else:  # a trimmed head: K rows, each id's logit gathered from them, HEAD_FLOOR added outside them
        rows = node("MatMul", [x, head_name], "/lm_head/MatMul")
        spread = node("Gather", [rows, init("/lm_head/index", model.head_index.numpy())], "/lm_head/Gather", axis=-1)
        nodes.append(helper.make_node("Add", [spread, init("/lm_head/floor", model.head_floor.float().numpy())],
                                      ["logits"], name="/lm_head/Add"))

    inputs, outputs = graph_inputs_outputs(c, max_len, io, tokens)
    graph = helper.make_graph(nodes, "edgedistil_gqa", inputs, outputs, inits, value_info=typed)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", GQA_OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="edgedistil")
    proto.ir_version = 8
    # the consumers' past is symbolic: the RoPE tables' length is the longest sequence the graph serves
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgedistil.max_len", str(max_len)
    return proto


def position_sequence_lengths(node, init, nodes) -> tuple[str, str]:
    """seqlens_k and total_sequence_length from the `position` input: total = position + T."""
    from onnx import TensorProto, helper

    t_len = node("Cast", [node("Gather", ["/shape_ids", init("/one_i64", np.array(1, np.int64))], "/T")], "/T_i32",
                 to=TensorProto.INT32)
    nodes.insert(0, helper.make_node("Shape", ["input_ids"], ["/shape_ids"], name="/Shape"))
    total = node("Add", ["position", t_len], "/total")  # [1]
    seqlens_k = node("Sub", [total, init("/one_i32", np.array([1], np.int32))], "/seqlens_k")
    return seqlens_k, node("Squeeze", [total, init("/axis0", np.array([0], np.int64))], "/total_scalar")


def hf_sequence_lengths(node, init) -> tuple[str, str]:
    """seqlens_k = ReduceSum(attention_mask) - 1 per row and total_sequence_length = attention_mask's length,
    the subgraph onnxruntime-genai's builder emits (make_attention_mask_reformatting_for_gqa)."""
    from onnx import TensorProto

    axis1 = init("/axis1", np.array([1], np.int64))
    kept = node("ReduceSum", ["attention_mask", axis1], "/attention_mask/ReduceSum", keepdims=0)  # [B]
    seqlens = node("Sub", [kept, init("/one_i64_vec", np.array([1], np.int64))], "/attention_mask/Sub")
    seqlens_k = node("Cast", [seqlens], "/seqlens_k", to=TensorProto.INT32)
    length = node("Gather", [node("Shape", ["attention_mask"], "/attention_mask/Shape"),
                             init("/one_i64", np.array(1, np.int64))], "/attention_mask/Gather", axis=0)
    return seqlens_k, node("Cast", [length], "/total_sequence_length", to=TensorProto.INT32)


def graph_inputs_outputs(c, max_len: int, io: str, tokens: list) -> tuple[list, list]:
    """The graph's declared inputs and outputs in the `io` convention."""
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    if io == "hf":
        past = ["batch_size", c.num_key_value_heads, "past_sequence_length", c.head_dim]
        present = ["batch_size", c.num_key_value_heads, "total_sequence_length", c.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                ["batch_size", "total_sequence_length"])]
    else:
        past = present = [1, c.num_key_value_heads, max_len, c.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT32, tokens),
                  helper.make_tensor_value_info("position", TensorProto.INT32, [1])]
    outputs = [helper.make_tensor_value_info("logits", f32, [*tokens, c.vocab_size])]
    for names in cache_names(c.num_hidden_layers):
        inputs += [helper.make_tensor_value_info(n, f32, past) for n in names[:2]]
        outputs += [helper.make_tensor_value_info(n, f32, present) for n in names[2:]]
    return inputs, outputs
