"""On-policy distillation (GKD): which steps sample, where a prompt ends, the student's samples and their loss, and
a tiny run that mixes both kinds of step."""

import json

import pytest
import torch

from edgedistil.build import recipe_with
from edgedistil.config import load_recipe
from edgedistil.distill import on_policy
from edgedistil.distill.losses import divergence
from edgedistil.distill.train import run_distill
from edgedistil.model import EdgeConfig, EdgeLM
from edgedistil.sources import load_corpus, tiny_teacher

from conftest import TINY


def tiny_lm(seed=0, vocab=40):
    cfg = EdgeConfig(model_type="llama", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4,
                     tie_word_embeddings=True, attention_bias=False, max_position_embeddings=64)
    torch.manual_seed(seed)
    return EdgeLM(cfg, max_len=64).eval()


@pytest.mark.parametrize("share,expected", [(0.0, 0), (0.25, 5), (0.5, 10), (0.3, 6), (1.0, 20)])
def test_on_policy_steps_are_the_share_spread_evenly(share, expected):
    steps = [s for s in range(20) if on_policy.is_on_policy(s, share)]
    assert len(steps) == expected
    if expected and expected < 20:  # spread out, not bunched at the start or the end
        assert steps[0] < 20 / expected and steps[-1] >= 20 - 20 / expected


def test_prompt_ends_after_the_first_assistant_header_or_halfway():
    header = [7, 8]
    row = [1, 2, 3, 7, 8, 4, 5, 7, 8, 6] + [9] * 10
    assert on_policy.prompt_length(row, header, room=4) == 5  # after the first header, not the second
    assert on_policy.prompt_length([1] * 20, header, room=4) == 10  # no header: halfway
    assert on_policy.prompt_length([1] * 20, None, room=4) == 10
    # a header so late that no answer would fit leaves `room` tokens
    assert on_policy.prompt_length([1] * 17 + [7, 8, 1], header, room=6) == 14


def test_mirror_generates_with_the_students_current_weights():
    student = tiny_lm()
    twin = on_policy.mirror(student)
    x = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(twin(x).logits, student(x), atol=1e-5)
        student.model.layers[0].mlp.up_proj.weight.mul_(3.0)  # as an optimizer step would, in place
        assert torch.allclose(twin(x).logits, student(x), atol=1e-5)
    assert not any(p.requires_grad for p in twin.parameters())


def test_samples_keep_each_prompt_and_mask_exactly_the_sampled_tokens():
    student, eos, pad, header = tiny_lm(), 3, 0, [5, 6]
    twin = on_policy.mirror(student)
    windows = torch.tensor([[9, 10, 5, 6] + [11] * 12, [9, 10, 12, 13, 14, 5, 6] + [11] * 9])
    ids, mask = on_policy.student_samples(twin, windows, header, new_tokens=6, temperature=1.0, eos_id=eos,
                                          pad_id=pad, seed=0)
    again, _ = on_policy.student_samples(twin, windows, header, new_tokens=6, temperature=1.0, eos_id=eos,
                                         pad_id=pad, seed=0)
    assert torch.equal(ids, again)  # seeded: a resumed run samples the same answers
    assert mask.shape == (2, ids.shape[1] - 1)
    for row, m, window, prompt in zip(ids.tolist(), mask.tolist(), windows.tolist(), (4, 7)):
        assert row[:prompt] == window[:prompt]  # each prompt ends after its own header
        picked = [j for j, keep in enumerate(m) if keep]
        assert picked[0] == prompt - 1  # the first sampled token is predicted at the prompt's last position
        sample = [row[j + 1] for j in picked]
        assert 1 <= len(sample) <= 6 and (eos not in sample or sample[-1] == eos)  # stops at the end of turn
        assert picked == list(range(prompt - 1, prompt - 1 + len(sample)))
        assert all(t == pad for t in row[prompt + len(sample):])


def test_on_policy_loss_counts_only_sampled_tokens_and_vanishes_at_the_teacher():
    s = torch.randn(2, 6, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.randn(2, 6, 40, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 1:4] = True
    loss, parts = on_policy.on_policy_loss(s, t, mask, 2.0, "forward_kl", 0.5)
    expect = 4.0 * divergence((s[mask] / 2).log_softmax(-1), (t[mask] / 2).log_softmax(-1), "forward_kl")
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5) and parts["sampled_tokens"] == 6
    loss.backward()
    assert s.grad[~mask].abs().max() == 0 and s.grad[mask].abs().max() > 0
    same, _ = on_policy.on_policy_loss(t, t, mask, 1.0, "jsd", 0.5)
    assert abs(same.item()) < 1e-6


def test_a_run_mixes_on_policy_steps_and_repeats_them(tmp_path):
    corpus = load_corpus("tiny")
    teacher_dir = tiny_teacher(tmp_path / "teacher", corpus.text, chat=True)
    recipe = recipe_with(load_recipe(TINY), distill={**load_recipe(TINY).section("distill"), "steps": 4,
                                                     "eval_tokens": 256, "preflight_export": False,
                                                     "on_policy": 0.5, "on_policy_tokens": 8},
                         student={**load_recipe(TINY).section("student"), "head_rows": 300})
    first = run_distill(teacher_dir, corpus, recipe, tmp_path / "a" / "distill", log=lambda m: None)
    assert first["head"]["rows"] == 300 and first["head"]["trained_over"] == "the whole vocabulary"
    second = run_distill(teacher_dir, corpus, recipe, tmp_path / "b" / "distill", log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "a" / "distill" / "train.jsonl").read_text().splitlines()]
    assert [r["on_policy"] for r in rows] == [False, True, False, True]
    assert all("ce" in r for r in rows if not r["on_policy"])
    assert all("ce" not in r and 0 < r["sampled_tokens"] <= 8 * recipe.distill.batch_size and r["kl"] > 0 for r in rows if r["on_policy"])
    assert first["on_policy"]["steps"] == 2 and "on-policy" in first["flavour"]
    assert first["on_policy"]["sampled_tokens"] == sum(r["sampled_tokens"] for r in rows if r["on_policy"])
    again = [json.loads(x) for x in (tmp_path / "b" / "distill" / "train.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in again]
    assert second["quality"]["student_perplexity"] == first["quality"]["student_perplexity"]


def test_loop_tokens_are_every_token_of_each_repeat_within_the_answer():
    # prompt [1, 2, 3, 4] then the answer 5 6 7 5 6 7 8 1 2 3 (its last three tokens quote the prompt: not a repeat)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 1, 2, 3, 0]])
    mask = torch.zeros(1, 14, dtype=torch.bool)
    mask[0, 3:13] = True  # positions 3..12 predict tokens 4..13
    marks = on_policy.loop_tokens(ids, mask, n=3)
    assert [ids[0, j + 1].item() for j in marks[0].nonzero().flatten().tolist()] == [5, 6, 7]
    assert marks[0].nonzero().flatten().tolist() == [6, 7, 8]  # the second 5 6 7, as predicted
    assert not on_policy.loop_tokens(ids, mask, n=4).any()


def test_unlikelihood_replaces_the_teacher_on_loop_tokens_and_pushes_them_down():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(1, 6, 40, generator=gen, requires_grad=True)
    t = torch.randn(1, 6, 40, generator=gen)
    targets = torch.randint(0, 40, (1, 6), generator=gen)
    mask = torch.tensor([[False, True, True, True, True, True]])
    loops = torch.tensor([[False, False, False, True, True, False]])
    plain, _ = on_policy.on_policy_loss(s, t, mask, 1.0, "forward_kl", 0.5, targets, loops, 0.0)
    alone, _ = on_policy.on_policy_loss(s, t, mask, 1.0, "forward_kl", 0.5)
    assert plain.item() == pytest.approx(alone.item())  # weight 0: the loops are scored by the teacher as before
    loss, parts = on_policy.on_policy_loss(s, t, mask, 1.0, "forward_kl", 0.5, targets, loops, 2.0)
    scored = mask & ~loops
    p = s.detach().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1).exp()[loops]
    expect = (divergence(s.detach()[scored].log_softmax(-1), t[scored].log_softmax(-1), "forward_kl") * 3
              + 2.0 * -torch.log1p(-p).sum()) / 5
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5) and parts["loop_tokens"] == 2
    loss.backward()
    stepped = s.detach() - 10.0 * s.grad
    q = stepped.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1).exp()[loops]
    assert (q < p).all()  # the repeated tokens lose probability
    assert s.grad[0, 0].abs().max() == 0  # the prompt position is not trained


def test_greedy_samples_do_not_depend_on_the_seed_and_follow_the_argmax():
    student, header = tiny_lm(), [5, 6]
    twin = on_policy.mirror(student)
    windows = torch.tensor([[9, 10, 5, 6] + [11] * 12])
    a, mask = on_policy.student_samples(twin, windows, header, 6, 0.0, eos_id=3, pad_id=0, seed=0)
    b, _ = on_policy.student_samples(twin, windows, header, 6, 0.0, eos_id=3, pad_id=0, seed=1)
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = student(a[:, :-1])
    picked = mask[0].nonzero().flatten()
    assert torch.equal(logits[0, picked].argmax(-1), a[0, picked + 1])


def test_a_run_with_unlikelihood_records_the_loop_tokens(tmp_path):
    corpus = load_corpus("tiny")
    teacher_dir = tiny_teacher(tmp_path / "teacher", corpus.text, chat=True)
    recipe = recipe_with(load_recipe(TINY), distill={**load_recipe(TINY).section("distill"), "steps": 2,
                                                     "eval_tokens": 256, "preflight_export": False,
                                                     "on_policy": 1.0, "on_policy_tokens": 16,
                                                     "on_policy_temperature": 0.0, "unlikelihood": 1.0,
                                                     "unlikelihood_ngram": 2})
    record = run_distill(teacher_dir, corpus, recipe, tmp_path / "distill", log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "distill" / "train.jsonl").read_text().splitlines()]
    assert all("loop_tokens" in r and r["loop_tokens"] <= r["sampled_tokens"] for r in rows)
    ul = record["on_policy"]["unlikelihood"]
    assert ul == {"weight": 1.0, "ngram": 2, "loop_tokens": int(sum(r["loop_tokens"] for r in rows))}
    assert ul["loop_tokens"] > 0  # the tiny student's greedy answers repeat themselves
    assert "unlikelihood on repeated 2-grams" in record["flavour"]
