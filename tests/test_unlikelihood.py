"""Token-level unlikelihood (Welleck et al. 2020) on the training windows: which tokens are candidates, that the
loss pushes them down and not the real next token, and a tiny run that records it."""

import json

import pytest
import torch

from edgedistil.build import recipe_with
from edgedistil.config import load_recipe
from edgedistil.distill.losses import repeat_candidates, token_unlikelihood
from edgedistil.distill.train import run_distill
from edgedistil.sources import load_corpus, tiny_teacher

from conftest import TINY


def candidates(ids, n):
    x = torch.tensor([ids])
    c = repeat_candidates(x[:, :-1], x[:, 1:], n)
    return [sorted(v for v in row.tolist() if v >= 0) for row in c[0]]


def test_token_level_candidates_are_the_distinct_earlier_tokens_but_the_next_one():
    assert candidates([5, 6, 5, 5, 7], 1) == [[5], [6], [6], [5, 6]]


def test_ngram_candidates_are_what_followed_the_last_n_minus_1_tokens_before():
    # "5 6" recurs at positions 3-4; before, it was followed by 7, and now by 9: 7 is the copy a loop would make
    assert candidates([5, 6, 7, 5, 6, 9, 5, 6], 3) == [[], [], [], [], [7], [], []]
    # the same copy as the real next token is no candidate: repeating what the data repeats is not punished
    assert candidates([5, 6, 7, 5, 6, 7], 3) == [[], [], [], [], []]
    assert candidates([5, 6, 7, 5, 8, 9], 2) == [[], [], [], [6], []]


def test_token_unlikelihood_pushes_the_candidates_down_and_leaves_positions_without_any_alone():
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([[5, 6, 7, 5, 6, 9, 5, 6]])
    inputs, labels = x[:, :-1], x[:, 1:]
    s = torch.randn(1, 7, 12, generator=gen, requires_grad=True)
    loss, per_position = token_unlikelihood(s, inputs, labels, 3)
    p7 = s.detach().softmax(-1)[0, 4, 7]
    assert loss.item() == pytest.approx((-torch.log1p(-p7) / 7).item(), rel=1e-5)
    assert per_position == pytest.approx(1 / 7)
    loss.backward()
    assert s.grad[0, [0, 1, 2, 3, 5, 6]].abs().max() == 0
    stepped = s.detach() - 5.0 * s.grad
    assert stepped.softmax(-1)[0, 4, 7] < p7  # the copy loses probability
    assert token_unlikelihood(stepped, inputs, labels, 3)[0] < loss


def test_token_unlikelihood_over_a_trimmed_heads_rows_reads_each_candidates_row():
    x = torch.tensor([[5, 6, 7, 5, 6, 9, 5, 6]])
    inputs, labels = x[:, :-1], x[:, 1:]
    rows = torch.full((12,), -100)
    rows[[5, 6, 7, 9]] = torch.arange(4)  # a head of four rows: 7 is row 2
    sub = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(1))
    loss, _ = token_unlikelihood(sub, inputs, labels, 3, rows)
    assert loss.item() == pytest.approx((-torch.log1p(-sub.softmax(-1)[0, 4, 2]) / 7).item(), rel=1e-5)
    rows[7] = -100  # the copy is outside the rows: nothing to push down
    assert token_unlikelihood(sub, inputs, labels, 3, rows)[0].item() == 0


def test_a_run_with_token_unlikelihood_trains_and_records_it(tmp_path):
    corpus = load_corpus("tiny")
    teacher_dir = tiny_teacher(tmp_path / "teacher", corpus.text, chat=True)
    base = load_recipe(TINY).section("distill")
    recipe = recipe_with(load_recipe(TINY), distill={**base, "steps": 2, "eval_tokens": 256,
                                                     "preflight_export": False, "token_unlikelihood": 0.5,
                                                     "token_unlikelihood_ngram": 1})
    record = run_distill(teacher_dir, corpus, recipe, tmp_path / "distill", log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "distill" / "train.jsonl").read_text().splitlines()]
    assert all(r["token_unlikelihood"] > 0 and r["ul_candidates"] > 1 for r in rows)
    assert all(r["loss"] > r["token_unlikelihood"] * 0.5 for r in rows)  # added to the distillation loss
    assert "token-level unlikelihood on 1-gram repeats" in record["flavour"]
    assert record["config"]["token_unlikelihood"] == 0.5
