"""Build a student from its teacher: the same family with fewer layers, initialised from teacher layers."""

from __future__ import annotations

import dataclasses

import torch

from edgedistil.errors import EdgeError
from edgedistil.model import EdgeLM


def even_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer indices spread evenly from first to last, as DistilBERT picked 0, 2, 4, 7, 9, 11 of 12."""
    if not 1 <= student_layers <= teacher_layers:
        raise EdgeError(f"the student has {student_layers} layers but the teacher has only {teacher_layers}",
                        f"set [student] layers between 1 and {teacher_layers}")
    if student_layers == 1:
        return [0]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(i * step) for i in range(student_layers)]


def build_student(teacher: EdgeLM, layers: int) -> tuple[EdgeLM, list[int]]:
    """A student with `layers` decoder layers copied from evenly spaced teacher layers; embeddings, final norm and
    head are copied too, so the student starts as a pruned teacher rather than from noise."""
    picks = even_layers(teacher.cfg.num_hidden_layers, layers)
    cfg = dataclasses.replace(teacher.cfg, num_hidden_layers=layers)
    student = EdgeLM(cfg, max_len=teacher.max_len)
    t_sd = teacher.state_dict()
    sd = {}
    for name in student.state_dict():
        src = name
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            src = f"model.layers.{picks[int(i)]}.{rest}"
        sd[name] = t_sd[src].detach().clone()
    student.load_state_dict(sd)  # a tied head shares the embedding Parameter, so it is loaded with it
    return student.to(torch.float32), picks
