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
    # a trimmed output head ([student] head_rows): its rows and what the cut costs on held-out text; None = whole
    return {"parameters": s["parameters"], "layers": s["layers"], "teacher_layers": s["teacher_layers"],
            "teacher_parameters": distill["teacher_parameters"], "head": distill.get("head")}


def evaluation_entry(evaluation: dict | None) -> dict | None:
    """The eval stage's figures (benchmarks beside the teacher, chat behaviour), or None when it did not run."""
    if not evaluation:
        return None
    mean, beh = evaluation["benchmarks"]["mean"], evaluation["behaviour"] or {}
    student = beh.get("student") or {}
    return {
        "subset": evaluation["subset"], "items": evaluation["items"],
        "benchmarks": {k: v for k, v in evaluation["benchmarks"].items() if k != "mean"},
        "benchmark_mean": mean, "benchmark_margin_kept": mean.get("margin_kept"),
        "benchmark_margin_kept_pooled": mean.get("margin_kept_pooled"),
        "degenerate_answers": student.get("degenerate"), "ends_with_end_of_turn": student.get("ends_with_end_of_turn"),
        "rouge_l_vs_teacher": beh.get("rouge_l_vs_teacher"), "prompts": beh.get("prompts"),
        "teacher_behaviour": beh.get("teacher"),
    }
