"""Which weights cost the most when quantized: round-to-nearest fake quantization in PyTorch, runtime-independent.

    python scripts/bench_quant_sensitivity.py --run RUN     # RUN: a finished `edgedistil build` (or distill) folder

Each row quantizes some weights (symmetric, absmax scale per output channel or per block of the input axis) and
compares the logits of the whole model, teacher-forced over held-out windows, with the fp32 model: top-1 agreement,
mean KL, and top-1 outside near-ties (fidelity.NEAR_TIE). Rows: one group at a time (which layers cost the most),
mixes (which to keep in higher precision), fp16 arithmetic alone (logits rounded to fp16; the whole model in
fp16), the same for the teacher (is the sensitivity the student's or inherited?),
and a rotated residual stream (QuaRot-style orthogonal rotation with RMSNorm scales folded in: exact in fp32, it
spreads outlier channels). Writes docs/results/quant_sensitivity.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgedistil.distill.data import load_tokenizer, tokenize  # noqa: E402
from edgedistil.fidelity import logits_agreement  # noqa: E402
from edgedistil.model import load_hf_folder  # noqa: E402


def fake_quant(w: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """w [out, in] rounded to `bits` with one absmax scale per block of `block` inputs (0: per output channel)."""
    if bits == 16:
        return w.half().float()
    qmax = 2 ** (bits - 1) - 1
    o, i = w.shape
    b = i if block == 0 else block
    wb = w.reshape(o, i // b, b)
    scale = wb.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
    return (torch.round(wb / scale).clamp(-qmax - 1, qmax) * scale).reshape(o, i)


def untie(model):
    if model.lm_head.weight is model.model.embed_tokens.weight:
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    return model


def rotate(model, q: torch.Tensor):
    """Rotate the residual stream by the orthogonal `q`: fold each RMSNorm scale into the linears it feeds, then
    readers (q/k/v, gate/up, LM head) take W q and writers (o_proj, down_proj) q^T W; the embedding becomes E q.
    RMSNorm without a scale commutes with rotation, so the model is the same function (to fp32 rounding)."""
    q = q.double()
    m = untie(model)

    def read(lin, g):
        lin.weight.copy_(((lin.weight.double() * g.double()[None, :]) @ q).float())

    def write(lin):
        lin.weight.copy_((q.T @ lin.weight.double()).float())

    for layer in m.model.layers:
        g = layer.input_layernorm.weight.detach().clone()
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            read(lin, g)
        layer.input_layernorm.weight.fill_(1.0)
        g = layer.post_attention_layernorm.weight.detach().clone()
        for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
            read(lin, g)
        layer.post_attention_layernorm.weight.fill_(1.0)
        write(layer.self_attn.o_proj)
        write(layer.mlp.down_proj)
    read(m.lm_head, m.model.norm.weight.detach().clone())
    m.model.norm.weight.fill_(1.0)
    m.model.embed_tokens.weight.copy_((m.model.embed_tokens.weight.double() @ q).float())
    return m


def hadamard_rotation(n: int, seed: int = 0) -> torch.Tensor:
    """An n x n orthogonal matrix: a Sylvester Hadamard block of the largest power of two dividing n, Kronecker a
    random orthogonal matrix for the rest (576 = 9 x 64)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while n % (h.shape[0] * 2) == 0 and h.shape[0] < 64:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / h.shape[0] ** 0.5
    r, _ = torch.linalg.qr(torch.randn(n // h.shape[0], n // h.shape[0], dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    return torch.kron(r.contiguous(), h.contiguous())


def measure(base, x, ref, spec) -> dict:
    """spec: [(selector(name) -> bool, bits, block)], first match wins; unmatched weights stay fp32."""
    m = untie(copy.deepcopy(base))
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                for select, bits, block in spec:
                    if select(name):
                        w = mod.weight
                        blk = block if block == 0 or w.shape[1] % block == 0 else 0
                        mod.weight.copy_(fake_quant(w, bits, blk))
                        break
        got = m(x).numpy().reshape(-1, ref.shape[-1])
    a = logits_agreement(ref, got)
    return {k: round(a[k], 5) for k in ("top1_agreement", "kl_mean", "max_abs_diff",
                                        "top1_agreement_outside_near_ties", "near_tie_share")}


def every(_):
    return True


def is_head(n):
    return n == "lm_head"


def is_embed(n):
    return n == "model.embed_tokens"


def proj(p):
    return lambda n: n.endswith(p)


def study(model, x, rows: dict, label: str, log) -> dict:
    with torch.no_grad():
        ref = model(x).numpy().reshape(-1, model.cfg.vocab_size)
    out = {}
    for name, spec in rows.items():
        t = time.perf_counter()
        out[name] = measure(model, x, ref, spec)
        log(f"{label:8s} {name:40s} {out[name]} ({time.perf_counter() - t:.1f}s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder with distill/student and distill/heldout.txt")
    ap.add_argument("--teacher", default=str(Path.home() / ".cache/edgedistil/teachers/smollm2-135m-instruct"))
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of --length tokens")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "quant_sensitivity.json"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    run = Path(args.run)
    ids = tokenize(load_tokenizer(run / "distill" / "student"),
                   (run / "distill" / "heldout.txt").read_text(encoding="utf-8")[:50_000])
    n, length = args.windows, args.length
    x = torch.tensor(np.stack([ids[i * 2 * length: i * 2 * length + length] for i in range(n)])).long()
    student = load_hf_folder(run / "distill" / "student", max_len=length).eval()

    groups = {"all": every, "embedding": is_embed, "lm_head": is_head, "decoder layers": lambda n: ".layers." in n}
    for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        groups[p] = proj(p)
    rows = {f"int8 block 32: {g} only": [(sel, 8, 32)] for g, sel in groups.items()}
    rows.update({
        "int8 per channel: all": [(every, 8, 0)],
        "int8 per channel: lm_head only": [(is_head, 8, 0)],
        "int8 per channel, embedding/lm_head fp16": [(is_head, 16, 0), (is_embed, 16, 0), (every, 8, 0)],
        "int8 block 32, embedding/lm_head fp16": [(is_head, 16, 0), (is_embed, 16, 0), (every, 8, 32)],
        "int8 block 32, lm_head and down_proj fp16": [(is_head, 16, 0), (proj("down_proj"), 16, 0),
                                                      (every, 8, 32)],
        "int4 block 32: all": [(every, 4, 32)],
        "int4 block 32, embedding/lm_head int8": [(is_head, 8, 32), (is_embed, 8, 32), (every, 4, 32)],
        "fp16: all": [(every, 16, 0)],
    })
    log = print
    result = {"command": "python scripts/bench_quant_sensitivity.py --run " + str(run),
              "machine": f"{platform.machine()}, {platform.system()}",
              "windows": n, "tokens_per_window": length, "positions": n * length,
              "method": "round-to-nearest, symmetric absmax scales, weights only; logits teacher-forced vs fp32"}
    result["student"] = study(student, x, rows, "student", log)
    brief = {k: rows[k] for k in ("int8 block 32: all only", "int8 per channel: all",
                                  "int8 block 32, embedding/lm_head fp16", "int4 block 32: all")}
    # fp16 arithmetic, apart from weight rounding: what Core ML's fp16 compute costs at near-ties
    ref = student(x).numpy().reshape(-1, student.cfg.vocab_size)
    keys = ("top1_agreement", "kl_mean", "top1_agreement_outside_near_ties")
    rounded = logits_agreement(ref, ref.astype(np.float16).astype(np.float32))
    half = logits_agreement(ref, copy.deepcopy(student).half()(x).float().numpy().reshape(-1, student.cfg.vocab_size))
    result["fp16_arithmetic"] = {"logits rounded to fp16": {k: round(rounded[k], 6) for k in keys},
                                 "whole model in fp16 (PyTorch CPU)": {k: round(half[k], 6) for k in keys}}
    log(f"fp16 arithmetic: {result['fp16_arithmetic']}")
    teacher = load_hf_folder(Path(args.teacher), max_len=length).eval()
    result["teacher"] = study(teacher, x, brief, "teacher", log)
    del teacher
    rotated = rotate(copy.deepcopy(student), hadamard_rotation(student.cfg.hidden_size))
    with torch.no_grad():
        exact = logits_agreement(student(x).numpy().reshape(-1, student.cfg.vocab_size),
                                 rotated(x).numpy().reshape(-1, student.cfg.vocab_size))
    result["rotation_exactness"] = {"max_abs_diff": exact["max_abs_diff"], "top1_agreement": exact["top1_agreement"]}
    result["student_rotated"] = study(rotated, x, brief, "rotated", log)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
