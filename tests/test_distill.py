"""The distillation loss and student construction."""

import math

import pytest
import torch

from edgedistil.distill.losses import kd_loss
from edgedistil.distill.student import build_student, even_layers
from edgedistil.errors import EdgeError
from edgedistil.model import EdgeConfig, EdgeLM


def logits(seed, shape=(2, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_is_plain_cross_entropy():
    s, t = logits(0), logits(1)
    labels = torch.randint(0, 11, (2, 5))
    loss, parts = kd_loss(s, t, labels, alpha=0.0, temperature=2.0)
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 11), labels.reshape(-1))
    assert math.isclose(float(loss), float(ce), rel_tol=1e-6)


def test_kl_is_zero_when_student_equals_teacher_and_scales_with_t_squared():
    s = logits(0)
    labels = torch.zeros(2, 5, dtype=torch.long)
    loss, parts = kd_loss(s, s.clone(), labels, alpha=1.0, temperature=3.0)
    assert abs(parts["kl"]) < 1e-6 and abs(float(loss)) < 1e-5
    t = logits(1)
    l2, p2 = kd_loss(s, t, labels, alpha=1.0, temperature=2.0)
    assert math.isclose(float(l2), 4.0 * p2["kl"], rel_tol=1e-5)


def test_kl_direction_is_teacher_to_student():
    # KL(p_t || p_s) computed by hand for one position
    s, t = logits(2, (1, 1, 7)), logits(3, (1, 1, 7))
    _, parts = kd_loss(s, t, torch.zeros(1, 1, dtype=torch.long), alpha=1.0, temperature=1.0)
    p_t, log_p_s, log_p_t = t.softmax(-1), s.log_softmax(-1), t.log_softmax(-1)
    assert math.isclose(parts["kl"], float((p_t * (log_p_t - log_p_s)).sum()), rel_tol=1e-5)


def test_even_layers_spans_first_to_last():
    assert even_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's pick
    assert even_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert even_layers(4, 1) == [0]
    with pytest.raises(EdgeError, match="only 4"):
        even_layers(4, 5)


def test_student_copies_teacher_layers():
    cfg = EdgeConfig(model_type="llama", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4,
                     tie_word_embeddings=True, attention_bias=False, max_position_embeddings=64)
    torch.manual_seed(0)
    teacher = EdgeLM(cfg, max_len=64)
    student, picks = build_student(teacher, 3)
    assert picks == [0, 2, 4] and student.cfg.num_hidden_layers == 3
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for i, src in enumerate(picks):
        name = "self_attn.q_proj.weight"
        assert torch.equal(s_sd[f"model.layers.{i}.{name}"], t_sd[f"model.layers.{src}.{name}"])
    assert torch.equal(s_sd["model.embed_tokens.weight"], t_sd["model.embed_tokens.weight"])
    assert student.lm_head.weight is student.model.embed_tokens.weight  # still tied, trained as one
    # a student with every layer is the teacher
    full, _ = build_student(teacher, 5)
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        assert torch.allclose(full(ids), teacher(ids))
