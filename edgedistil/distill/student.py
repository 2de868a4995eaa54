"""Design a student from its teacher: fewer layers, optionally a narrower FFN or fewer heads, and how it starts.

Layers are copied from the teacher (evenly spaced as DistilBERT did, the first k, or a given list) with the
embeddings, final norm and head, so the student starts as a pruned teacher rather than from noise; or everything
starts random. Weights the narrower shape cannot hold whole are sliced (the teacher's first rows/heads) or
re-initialised, and the returned info says which tensors went which way.
"""

from __future__ import annotations

import dataclasses

import torch

from edgedistil.errors import EdgeError
from edgedistil.model import EdgeLM

INIT_STD = 0.02  # the usual Llama initializer_range, for weights that start random


def even_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer indices spread evenly from first to last, as DistilBERT picked 0, 2, 4, 7, 9, 11 of 12."""
    if not 1 <= student_layers <= teacher_layers:
        raise EdgeError(f"the student has {student_layers} layers but the teacher has only {teacher_layers}",
                        f"set [student] layers between 1 and {teacher_layers}")
    if student_layers == 1:
        return [0]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(i * step) for i in range(student_layers)]


def pick_layers(init: str | list, teacher_layers: int, student_layers: int) -> list[int] | None:
    """Teacher layer per student layer for `init`; None for a random student."""
    picks = even_layers(teacher_layers, student_layers)  # also checks the count
    if init == "random":
        return None
    if init == "first":
        return list(range(student_layers))
    if isinstance(init, list):
        bad = [i for i in init if not 0 <= i < teacher_layers]
        if bad:
            raise EdgeError(f"[student] init lists teacher layer {bad[0]} but the teacher has layers 0.."
                            f"{teacher_layers - 1}", f"use indices below {teacher_layers}")
        return list(init)
    return picks


def student_heads(teacher_cfg, heads: int) -> tuple[int, int]:
    """(attention heads, kv heads) for a student asking for `heads` (0 = the teacher's); the teacher's ratio of
    query heads per kv head is kept so each kept kv head brings its whole group of query heads."""
    h, kv = teacher_cfg.num_attention_heads, teacher_cfg.num_key_value_heads
    if heads == 0 or heads == h:
        return h, kv
    rep = h // kv
    valid = [g * rep for g in range(1, kv + 1)]
    if heads not in valid:
        raise EdgeError(f"[student] heads = {heads} does not fit the teacher's {h} heads in {kv} kv groups of {rep}",
                        f"use one of {', '.join(map(str, valid))} (whole kv groups), or 0 for the teacher's")
    return heads, heads // rep


def student_ffn(teacher_cfg, intermediate_size: int) -> int:
    """The student's FFN width for `intermediate_size` (0 = the teacher's); never wider than the teacher's."""
    ffn = intermediate_size or teacher_cfg.intermediate_size
    if ffn > teacher_cfg.intermediate_size:
        raise EdgeError(f"[student] intermediate_size = {ffn} is wider than the teacher's "
                        f"{teacher_cfg.intermediate_size}",
                        f"use a value up to {teacher_cfg.intermediate_size}, or 0 for the teacher's")
    return ffn


def check_fits(student, teacher_cfg) -> None:
    """Refuse a [student] design the teacher cannot give (too many layers, a wider FFN, heads that split a kv
    group, init indices past its last layer), from its config alone, before any work on the teacher starts."""
    if student.source:
        return
    pick_layers(student.init if isinstance(student.init, list) else "even", teacher_cfg.num_hidden_layers,
                student.layers)
    student_heads(teacher_cfg, student.heads)
    student_ffn(teacher_cfg, student.intermediate_size)


def _random_like(t: torch.Tensor, name: str, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones_like(t)
    if name.endswith(".bias"):
        return torch.zeros_like(t)
    return torch.randn(t.shape, generator=gen) * INIT_STD


def _slice(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The teacher tensor cut to the student's shape: its leading rows and columns. Heads and FFN units are laid
    out in blocks along those axes (q/k/v rows, o_proj and down_proj columns), so this keeps the first ones."""
    return src[tuple(slice(0, n) for n in shape)]


def _units(rest: str, width: dict, layer: int, head_dim: int, rep: int) -> tuple[torch.Tensor, int] | None:
    """(indices, axis) of the measured FFN neurons or KV groups a narrowed tensor keeps; None if it is whole."""
    ffn, groups = width.get("ffn"), width.get("kv_groups")
    if ffn is not None and rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
        return ffn[layer], 0
    if ffn is not None and rest == "mlp.down_proj.weight":
        return ffn[layer], 1
    if groups is None or not rest.startswith("self_attn."):
        return None
    g = groups[layer]
    kv_rows = (g[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    heads = (g[:, None] * rep + torch.arange(rep)).reshape(-1)
    q_rows = (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    part = rest.split(".")[1]
    if part in ("k_proj", "v_proj"):
        return kv_rows, 0
    if part == "q_proj":
        return q_rows, 0
    if part == "o_proj" and rest.endswith("weight"):
        return q_rows, 1
    return None


def build_student(teacher: EdgeLM, layers: int, init: str | list = "even", intermediate_size: int = 0,
                  heads: int = 0, shrink_init: str = "slice", seed: int = 0,
                  width: dict | None = None) -> tuple[EdgeLM, dict]:
    """The student and an info dict: teacher_layers (None when random), and which tensor names (layer index
    dropped) were copied, sliced from teacher weights, or initialised randomly.

    `init` may be a list of teacher layers (a measured pick, prune.keep_layers). `width` (prune's measurement)
    gives per student layer the FFN neurons ("ffn") and KV groups ("kv_groups") to keep when the student is
    narrower; without it a narrowed tensor keeps the teacher's first rows ("slice")."""
    tc = teacher.cfg
    picks = pick_layers(init, tc.num_hidden_layers, layers)
    n_head, n_kv = student_heads(tc, heads)
    ffn = student_ffn(tc, intermediate_size)
    cfg = dataclasses.replace(tc, num_hidden_layers=layers, intermediate_size=ffn, num_attention_heads=n_head,
                              num_key_value_heads=n_kv)
    student = EdgeLM(cfg, max_len=teacher.max_len)
    gen = torch.Generator().manual_seed(seed)
    t_sd = teacher.state_dict()
    sd, how = {}, {"copied": set(), "selected": set(), "sliced": set(), "random": set()}
    for name, want in student.state_dict().items():
        short = name
        src = name
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            short = f"model.layers.*.{rest}"
            src = f"model.layers.{picks[int(i)]}.{rest}" if picks is not None else None
        units = _units(short.split(".", 3)[3], width, int(i), tc.head_dim, tc.num_attention_heads //
                       tc.num_key_value_heads) if width and picks is not None and short != name else None
        if picks is None:
            sd[name], kind = _random_like(want, name, gen), "random"
        elif t_sd[src].shape == want.shape:
            sd[name], kind = t_sd[src].detach().clone(), "copied"
        elif units is not None:
            sd[name] = t_sd[src].index_select(units[1], units[0]).detach().clone()
            kind = "selected"
        elif shrink_init == "slice":
            sd[name] = _slice(t_sd[src], want.shape).detach().clone()
            kind = "sliced"
        else:
            sd[name], kind = _random_like(want, name, gen), "random"
        how[kind].add(short)
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    student.load_state_dict(sd)  # a tied head shares the embedding Parameter, so it is loaded with it
    info = {"teacher_layers": picks, "intermediate_size": ffn, "heads": n_head, "kv_heads": n_kv,
            **{k: sorted(v) for k, v in how.items()}}
    return student.to(torch.float32), info
