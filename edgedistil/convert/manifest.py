"""Manifest sections every target's bundle shares, made from the distill record."""

from __future__ import annotations


def quality_entry(distill: dict) -> dict:
    """The student against the teacher on held-out text (PyTorch, fp32): what distillation kept."""
    q = distill["quality"]
    return {"student_perplexity": q["student_perplexity"], "teacher_perplexity": q["teacher_perplexity"],
            "top1_agreement_with_teacher": q["top1_agreement_with_teacher"],
            "kl_teacher_student_mean": q["kl_teacher_student_mean"], "quality_retained": q["quality_retained"],
            "heldout_tokens": q["tokens"], "corpus": distill["corpus"]["name"]}


def student_entry(distill: dict) -> dict:
    s = distill["student"]
    return {"parameters": s["parameters"], "layers": s["layers"], "teacher_layers": s["teacher_layers"],
            "teacher_parameters": distill["teacher_parameters"]}
