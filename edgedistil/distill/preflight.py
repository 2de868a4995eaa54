"""Pre-flight: the checks that make a doomed distillation fail in seconds instead of after hours of training.

- the teacher's and student's tokenizers must be one vocabulary for logit KD (else: sequence-level KD);
- an estimate of the student's parameters, size on disk (fp32, int8) and the RAM training will take;
- a trial export of the student's decode graph (EdgeLM.step at T = 1) with the export stage's own exporter,
  checked by onnx.checker and run once in ONNX Runtime, so a student that cannot ship is caught now.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from edgedistil.errors import EdgeError
from edgedistil.model import EdgeLM

SEQUENCE_KD_FIX = ("set [distill] method = \"sequence\" (sequence-level KD: the teacher writes text, the student "
                   "learns it with its own tokenizer), or build the student from the teacher ([student] source = \"\")")


def check_tokenizers(teacher_tok: Tokenizer, student_tok: Tokenizer, teacher_vocab: int, student_vocab: int) -> dict:
    """Logit KD compares distributions token id by token id: both sides must mean the same thing by each id."""
    if teacher_vocab != student_vocab:
        raise EdgeError(f"the teacher has {teacher_vocab} output tokens but the student {student_vocab}, so their "
                        "next-token distributions cannot be compared", SEQUENCE_KD_FIX)
    tv, sv = teacher_tok.get_vocab(with_added_tokens=True), student_tok.get_vocab(with_added_tokens=True)
    differ = sum(1 for tok, i in tv.items() if sv.get(tok) != i) + sum(1 for tok in sv if tok not in tv)
    if differ:
        example = next((tok for tok, i in sorted(tv.items(), key=lambda x: x[1]) if sv.get(tok) != i), None)
        raise EdgeError(f"the teacher's and student's tokenizers differ ({differ} tokens map to other ids, e.g. "
                        f"{example!r}), so logit KD would compare unrelated tokens", SEQUENCE_KD_FIX)
    return {"vocab_size": teacher_vocab, "tokenizers": "identical"}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() skips a tied head's second name


def estimate(student: EdgeLM, teacher: EdgeLM | None, batch_size: int, seq_len: int) -> dict:
    """Size and training-memory estimates, before anything is trained (the run records the measured peak too).

    Training RAM = student weights, gradients and AdamW's two moments (16 bytes a parameter) + the frozen teacher
    (4 bytes a parameter) + activations kept for backward: per token and student layer about 16 hidden-sized and
    3 FFN-sized fp32 values and the attention scores, plus about six [B, T, V] fp32 logit-sized tensors (student
    and teacher logits, their softened log-probabilities, and the gradient).
    """
    c = student.cfg
    n = count_parameters(student)
    n_teacher = count_parameters(teacher) if teacher is not None else 0
    tokens = batch_size * seq_len
    per_layer = 16 * c.hidden_size + 3 * c.intermediate_size + c.num_attention_heads * seq_len
    activations = 4 * tokens * (c.num_hidden_layers * per_layer + 6 * c.vocab_size)
    return {
        "parameters": n,
        "fp32_mb": round(4 * n / 1e6, 1),
        "int8_mb": round(n / 1e6, 1),  # one byte a weight; per-channel scales add well under 1%
        "teacher_parameters": n_teacher,
        "train_ram_mb": round((16 * n + 4 * n_teacher + activations) / 1e6, 1),
        "basis": "estimate: 16 B/param student (weights, grads, AdamW), 4 B/param teacher, activations of one batch",
    }


def trial_export(student: EdgeLM, max_len: int, log=print) -> dict:
    """Export the student's decode step (T = 1) to a temp ONNX file exactly as the export stage does, check it,
    and run one step in ONNX Runtime against PyTorch."""
    import onnx

    from edgedistil.export.onnx import INPUTS, OPSET, OUTPUTS, _Step  # the export stage's exporter settings
    from edgedistil.runtimes.ort import OrtLM

    model = copy.deepcopy(student).to("cpu").float().eval()
    model.max_len = max_len
    model.build_rope()
    k, v = model.empty_cache(max_len)
    example = (torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), k, v)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgedistil-preflight-") as tmp:
        path = Path(tmp) / "decode.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Step(model), example, str(path), dynamo=False, opset_version=OPSET,
                                  input_names=INPUTS, output_names=OUTPUTS,
                                  dynamic_axes={"input_ids": {1: "T"}, "logits": {1: "T"}})
            onnx.checker.check_model(str(path), full_check=True)
            ort_lm = OrtLM(path)
            token = 1 % model.cfg.vocab_size
            got, _ = ort_lm.step([token], 0, ort_lm.empty_cache())
            with torch.no_grad():
                want = model.step(torch.tensor([[token]], dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                                  k, v)[0][0].numpy()
        except EdgeError as e:
            raise EdgeError(f"pre-flight: the student's decode graph does not export: {e.problem}", e.fix) from None
        except Exception as e:  # the exporter, checker and ORT each raise their own types; all mean "cannot ship"
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise EdgeError(f"pre-flight: the student's decode graph does not export to ONNX "
                            f"({type(e).__name__}: {msg})",
                            "change the student design ([student] heads, intermediate_size or source), or set "
                            "[distill] preflight_export = false to train a student that will not ship") from None
        size = path.stat().st_size
    diff = float(np.abs(got - want).max())
    seconds = round(time.perf_counter() - t0, 2)
    log(f"pre-flight: decode graph exports and runs in ONNX Runtime ({size / 1e6:.1f} MB fp32, max abs logit diff "
        f"{diff:.1e}, {seconds} s)")
    return {"onnx_bytes": size, "max_abs_diff": diff, "seconds": seconds, "opset": OPSET}
