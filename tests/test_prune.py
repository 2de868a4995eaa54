"""Choosing the student by measurement (distill/prune.py) and the teacher-chat corpus, on tiny in-process models."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import TINY

from edgedistil.distill import prune
from edgedistil.distill.data import load_tokenizer, tokenize
from edgedistil.distill.evaluate import eval_windows
from edgedistil.distill.student import build_student, even_layers
from edgedistil.errors import EdgeError
from edgedistil.model import load_hf_folder
from edgedistil.sources import load_corpus, tiny_teacher

TEXT = load_corpus("tiny").text


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("prune") / "teacher", TEXT, layers=6)


@pytest.fixture(scope="module")
def windows(teacher_dir):
    return eval_windows(tokenize(load_tokenizer(teacher_dir), TEXT[:20_000]), 32, 512)


def _teacher(teacher_dir):
    return load_hf_folder(teacher_dir).float().eval()


def _make_identity(teacher, i):
    """Layer i adds nothing to the residual stream: its attention and FFN outputs are zero."""
    with torch.no_grad():
        teacher.model.layers[i].self_attn.o_proj.weight.zero_()
        teacher.model.layers[i].mlp.down_proj.weight.zero_()


def test_greedy_removal_is_optimal_for_one_layer_and_nested(teacher_dir, windows):
    teacher = _teacher(teacher_dir)
    ranking = prune.rank_layers(teacher, windows, "greedy", log=lambda *_: None)
    n = teacher.cfg.num_hidden_layers
    assert sorted(ranking["removal_order"]) == sorted(set(ranking["removal_order"]))
    assert len(ranking["removal_order"]) == n - 1
    # one layer removed: the greedy pick is the best of all n subsets of n-1 layers
    best = min(prune.keep_loss(teacher, windows, [i for i in range(n) if i != j]) for j in range(n))
    assert prune.keep_loss(teacher, windows, prune.keep_layers(ranking, n - 1)) == pytest.approx(best, abs=1e-4)
    # picks for every size are nested and in teacher order
    for k in range(1, n):
        small, big = prune.keep_layers(ranking, k), prune.keep_layers(ranking, k + 1)
        assert len(small) == k and set(small) < set(big) and small == sorted(small)


def test_greedy_pick_beats_even_spacing_at_calibration(teacher_dir, windows):
    teacher = _teacher(teacher_dir)
    ranking = prune.rank_layers(teacher, windows, "greedy", log=lambda *_: None)
    for k in (2, 3, 4):
        even = prune.keep_loss(teacher, windows, even_layers(teacher.cfg.num_hidden_layers, k))
        assert prune.keep_loss(teacher, windows, prune.keep_layers(ranking, k)) <= even + 1e-6


def test_one_shot_rankings_find_a_layer_that_does_nothing(teacher_dir, windows):
    teacher = _teacher(teacher_dir)
    _make_identity(teacher, 3)
    bi = prune.rank_layers(teacher, windows, "block_influence")
    assert bi["block_influence"][3] == pytest.approx(0.0, abs=1e-6)
    assert bi["removal_order"][0] == 3 and 3 not in prune.keep_layers(bi, 5)
    angular = prune.rank_layers(teacher, windows, "angular")
    assert prune.keep_layers(angular, 5) == [0, 1, 2, 4, 5]


def test_width_importance_keeps_active_units_and_drops_dead_ones(teacher_dir, windows):
    teacher = _teacher(teacher_dir)
    dead = [0, 5, 17]
    with torch.no_grad():  # FFN neurons whose gate never opens contribute nothing
        teacher.model.layers[1].mlp.gate_proj.weight[dead] = 0.0
        teacher.model.layers[1].mlp.up_proj.weight[dead] = 0.0
    picks = [0, 1, 4]
    imp = prune.width_importance(teacher, windows, picks)
    assert len(imp["ffn"]) == 3 and imp["ffn"][1].shape == (teacher.cfg.intermediate_size,)
    keep = prune.top_indices(imp["ffn"][1], 64)
    assert not set(dead) & set(keep.tolist()) and keep.tolist() == sorted(keep.tolist())
    width = {"ffn": [prune.top_indices(f, 64) for f in imp["ffn"]],
             "kv_groups": [prune.top_indices(g, 1) for g in imp["kv_groups"]]}
    student, info = build_student(teacher, 3, picks, intermediate_size=64, heads=2, width=width)
    t_layer, s_layer = teacher.model.layers[1], student.model.layers[1]
    assert torch.equal(s_layer.mlp.gate_proj.weight, t_layer.mlp.gate_proj.weight[width["ffn"][1]])
    assert torch.equal(s_layer.mlp.down_proj.weight, t_layer.mlp.down_proj.weight[:, width["ffn"][1]])
    g, d, rep = int(width["kv_groups"][1][0]), teacher.cfg.head_dim, 2  # 4 heads in 2 kv groups of 2
    assert torch.equal(s_layer.self_attn.k_proj.weight, t_layer.self_attn.k_proj.weight[g * d:(g + 1) * d])
    assert torch.equal(s_layer.self_attn.q_proj.weight,
                       t_layer.self_attn.q_proj.weight[g * rep * d:(g + 1) * rep * d])
    assert torch.equal(s_layer.self_attn.o_proj.weight,
                       t_layer.self_attn.o_proj.weight[:, g * rep * d:(g + 1) * rep * d])
    assert "model.layers.*.mlp.up_proj.weight" in info["selected"] and info["sliced"] == []


def test_selected_width_starts_better_than_sliced(teacher_dir, windows):
    teacher = _teacher(teacher_dir)
    picks = list(range(teacher.cfg.num_hidden_layers))
    imp = prune.width_importance(teacher, windows, picks)
    width = {"ffn": [prune.top_indices(f, 32) for f in imp["ffn"]], "kv_groups": None}

    def loss(model):
        x = windows
        logits = model(x[:, :-1]).float()
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)))

    with torch.no_grad():
        chosen, _ = build_student(teacher, len(picks), picks, intermediate_size=32, width=width)
        sliced, _ = build_student(teacher, len(picks), picks, intermediate_size=32, shrink_init="slice")
        assert loss(chosen) < loss(sliced)


def test_ranking_is_cached_once(teacher_dir, windows, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    teacher = _teacher(teacher_dir)
    ids = tokenize(load_tokenizer(teacher_dir), TEXT[:20_000])
    first = prune.cached_ranking(teacher, teacher_dir, ids, "greedy", 32, 512, log=lambda *_: None)
    files = list((tmp_path / "cache" / "layer-rankings").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["removal_order"] == first["removal_order"]
    calls = []
    monkeypatch.setattr(prune, "rank_layers", lambda *a, **k: calls.append(1))
    again = prune.cached_ranking(teacher, teacher_dir, ids, "greedy", 32, 512, log=lambda *_: None)
    assert again == first and not calls


def test_teacher_chat_corpus_is_written_by_the_teacher_once(tmp_path, monkeypatch):
    from edgedistil.sources import teacher_chat

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    teacher = tiny_teacher(tmp_path / "chat-teacher", TEXT, chat=True)
    settings = teacher_chat.ChatSettings(conversations=6, query_tokens=8, answer_tokens=12, batch_size=4)
    corpus = teacher_chat.teacher_chat_corpus(teacher, settings, log=lambda *_: None)
    convs = corpus.text.split("<|im_start|>system\n")[1:]
    assert corpus.name == "teacher-chat" and 1 <= len(convs) <= 6
    assert all("<|im_start|>user\n" in c and "<|im_start|>assistant\n" in c for c in convs)
    assert len(corpus.documents) == len(convs) and "\n".join(corpus.documents) == corpus.text  # one a conversation
    ids = tokenize(load_tokenizer(teacher), corpus.text)
    assert (ids == 1).sum() == 3 * len(convs)  # <|im_start|> is one special token, three a conversation
    rows = [json.loads(ln) for ln in next((tmp_path / "cache" / "corpora" / "teacher-chat").iterdir())
            .joinpath("conversations.jsonl").read_text().splitlines()]
    assert all(r["text"].endswith("<|im_end|>") == r["ended"] for r in rows)
    monkeypatch.setattr(teacher_chat, "_write_batch", lambda *a, **k: pytest.fail("generated again"))
    assert teacher_chat.teacher_chat_corpus(teacher, settings, log=lambda *_: None).text == corpus.text
    # the loop filter reads the same generation and leaves out the answers the eval calls degenerate
    done = next((tmp_path / "cache" / "corpora" / "teacher-chat").iterdir()) / "conversations.jsonl"
    loop = {"batch": 0, "query": "q", "answer": "the cat sat, the cat sat, the cat sat", "ended": True,
            "text": "LOOPING CONVERSATION"}
    done.write_text(done.read_text() + json.dumps(loop) + "\n")
    assert teacher_chat.teacher_chat_corpus(teacher, settings, log=lambda *_: None).text.endswith(loop["text"])
    filtered = teacher_chat.teacher_chat_corpus(teacher, dataclasses.replace(settings, drop_loops=True),
                                                log=lambda *_: None)
    assert filtered.text == corpus.text and "1 whose answer loops left out" in filtered.source


def test_teacher_chat_mixes_in_documents_the_teacher_writes_from_nothing(tmp_path, monkeypatch):
    """[data] chat_documents = n: the teacher also writes n documents from its document-start token, cached apart
    from the conversations, whose cache key stays the one they had without documents; a larger count starts from
    the smaller one's whole batches."""
    from edgedistil.sources import teacher_chat

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    teacher = tiny_teacher(tmp_path / "chat-teacher", TEXT, chat=True)
    chat = teacher_chat.ChatSettings(conversations=4, query_tokens=6, answer_tokens=8, batch_size=4)
    mixed = dataclasses.replace(chat, documents=6, document_tokens=10)
    assert teacher_chat._key(teacher, mixed) == teacher_chat._key(teacher, chat)
    alone = teacher_chat.teacher_chat_corpus(teacher, chat, log=lambda *_: None)
    corpus = teacher_chat.teacher_chat_corpus(teacher, mixed, log=lambda *_: None)
    documents = corpus.documents[len(alone.documents):]
    assert corpus.documents[:len(alone.documents)] == alone.documents and 1 <= len(documents) <= 6
    assert "6 documents" in corpus.source or f"{len(documents)} documents" in corpus.source
    assert all("<|im_start|>" not in d for d in documents)  # written as plain text, not as a conversation
    folder = tmp_path / "cache" / "corpora" / "teacher-documents"
    assert len(list(folder.iterdir())) == 1 and len(list((tmp_path / "cache" / "corpora" / "teacher-chat")
                                                         .iterdir())) == 1
    # read back, not written again; 10 documents reuse the first (whole) batch of the 6
    monkeypatch.setattr(teacher_chat, "_write_document_batch", lambda *a, **k: pytest.fail("generated again"))
    assert teacher_chat.teacher_chat_corpus(teacher, mixed, log=lambda *_: None).text == corpus.text
    written = []
    monkeypatch.setattr(teacher_chat, "_write_document_batch",
                        lambda model, tok, start, settings, batch: written.append(batch) or [{"text": "x", "ended": 0}])
    more = teacher_chat.teacher_chat_corpus(teacher, dataclasses.replace(mixed, documents=10), log=lambda *_: None)
    first = [r["text"] for r in map(json.loads, next(folder.iterdir()).joinpath("documents.jsonl").read_text()
                                     .splitlines()) if r["batch"] == 0]
    assert written == [1, 2] and more.documents[len(alone.documents):] == first + ["x", "x"]
    with pytest.raises(EdgeError, match="chat_documents"):
        teacher_chat.teacher_chat_corpus(teacher, dataclasses.replace(mixed, documents=-1), log=lambda *_: None)


def test_teacher_chat_answers_can_be_kept_from_repeating_ngrams(tmp_path, monkeypatch):
    """[data] chat_no_repeat_ngram = n: no answer repeats an n-gram, the corpus gets its own cache key, and at 0 the
    key is the one corpora had before the setting existed."""
    from edgedistil.sources import teacher_chat

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    teacher = tiny_teacher(tmp_path / "chat-teacher", TEXT, chat=True)
    plain = teacher_chat.ChatSettings(conversations=8, query_tokens=6, answer_tokens=40, batch_size=4)
    assert "no_repeat_ngram" not in teacher_chat._generation(plain)
    blocked = dataclasses.replace(plain, no_repeat_ngram=1)  # the tiny teacher repeats tokens, not longer n-grams
    assert teacher_chat._key(teacher, blocked) != teacher_chat._key(teacher, plain)

    import transformers

    generate, answers = transformers.GenerationMixin.generate, []

    def recorded(model, input_ids=None, **kw):  # the greedy answers' new tokens, as the teacher wrote them
        out = generate(model, input_ids=input_ids, **kw)
        if not kw.get("do_sample"):
            answers.extend(row[input_ids.shape[1]:].tolist() for row in out)
        return out

    monkeypatch.setattr(transformers.GenerationMixin, "generate", recorded)

    def repeats(ids, n=1):
        ids = ids[:ids.index(2)] if 2 in ids else ids  # up to the end of turn; padding after it repeats
        grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        return len(grams) - len(set(grams))

    teacher_chat.teacher_chat_corpus(teacher, plain, log=lambda *_: None)
    assert sum(map(repeats, answers)) > 0
    answers.clear()
    teacher_chat.teacher_chat_corpus(teacher, blocked, log=lambda *_: None)
    assert answers and sum(map(repeats, answers)) == 0
    with pytest.raises(EdgeError, match="chat_no_repeat_ngram"):
        teacher_chat.teacher_chat_corpus(teacher, dataclasses.replace(plain, no_repeat_ngram=-1), log=lambda *_: None)


def test_teacher_chat_writes_in_the_precision_training_picks(tmp_path, monkeypatch):
    """The recipe's [distill] precision decides the teacher's weights while it writes, and the precision is part of
    the corpus' cache key: bf16 text is not served for an fp32 request."""
    from edgedistil.build import recipe_with
    from edgedistil.config import load_recipe
    from edgedistil.sources import teacher_chat

    recipe = recipe_with(load_recipe(TINY), distill={"device": "cpu", "precision": "bf16"})
    bf16 = teacher_chat.chat_settings(recipe)
    assert (bf16.device, bf16.dtype) == ("cpu", "bfloat16")
    fp32 = teacher_chat.chat_settings(recipe_with(recipe, distill={"precision": "fp32"}))
    assert fp32.dtype == "float32"

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    teacher = tiny_teacher(tmp_path / "chat-teacher", TEXT, chat=True)
    small = dict(conversations=2, query_tokens=4, answer_tokens=6, batch_size=2)
    seen = []
    write = teacher_chat._write_batch
    monkeypatch.setattr(teacher_chat, "_write_batch", lambda m, *a: seen.append(m.dtype) or write(m, *a))
    teacher_chat.teacher_chat_corpus(teacher, dataclasses.replace(bf16, **small), log=lambda *_: None)
    teacher_chat.teacher_chat_corpus(teacher, dataclasses.replace(fp32, **small), log=lambda *_: None)
    assert seen == [torch.bfloat16, torch.float32]
    metas = [json.loads(f.read_text()) for f in (tmp_path / "cache" / "corpora" / "teacher-chat").glob("*/meta.json")]
    assert sorted(m["settings"]["dtype"] for m in metas) == ["bfloat16", "float32"]
    with pytest.raises(EdgeError, match="float32 or bfloat16"):
        teacher_chat.teacher_chat_corpus(teacher, dataclasses.replace(fp32, dtype="float16"), log=lambda *_: None)


def test_two_callers_of_one_teacher_chat_corpus_write_it_once(tmp_path, monkeypatch):
    """torchrun's ranks ask for the corpus at once: one writes each batch, the other waits and reads the same text."""
    import threading

    from edgedistil.sources import teacher_chat

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    teacher = tiny_teacher(tmp_path / "chat-teacher", TEXT, chat=True)
    settings = teacher_chat.ChatSettings(conversations=4, query_tokens=4, answer_tokens=6, batch_size=2)
    written, texts = [], []
    write = teacher_chat._write_batch
    monkeypatch.setattr(teacher_chat, "_write_batch", lambda *a: written.append(a[-1]) or write(*a))
    callers = [threading.Thread(target=lambda: texts.append(teacher_chat.teacher_chat_corpus(
        teacher, settings, log=lambda *_: None).text)) for _ in range(2)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert sorted(written) == [0, 1] and len(texts) == 2 and texts[0] == texts[1]


def test_teacher_chat_needs_a_chat_template(tmp_path, monkeypatch):
    from edgedistil.errors import EdgeError
    from edgedistil.sources import teacher_chat

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    plain = tiny_teacher(tmp_path / "plain", TEXT)
    with pytest.raises(EdgeError, match="no chat template"):
        teacher_chat.teacher_chat_corpus(plain, teacher_chat.ChatSettings(conversations=2), log=lambda *_: None)
    assert not (tmp_path / "cache" / "corpora").exists()


def test_distill_with_a_measured_init_records_its_ranking(tmp_path, teacher_dir, monkeypatch):
    from edgedistil.build import recipe_with
    from edgedistil.config import load_recipe
    from edgedistil.distill.train import run_distill

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    r = recipe_with(load_recipe(TINY), distill={"steps": 2, "eval_tokens": 128, "preflight_export": False})
    r = recipe_with(r, student={**r.section("student"), "layers": 3, "init": "auto", "intermediate_size": 64})
    other = tmp_path / "other.txt"
    other.write_text(load_corpus("pydoc").text[60_000:90_000])
    r = recipe_with(r, data={**r.section("data"), "heldout_corpus": str(other)})
    record = run_distill(teacher_dir, load_corpus("tiny"), r, tmp_path / "distill", log=lambda *_: None)
    s = record["student"]
    ranking = s["ranking"]
    assert ranking["method"] == prune.AUTO_RANKING and s["init"] == "auto"
    assert s["teacher_layers"] == prune.keep_layers(ranking, 3)
    assert len(s["width"]["ffn"]) == 3 and all(len(u) == 64 for u in s["width"]["ffn"])
    assert "model.layers.*.mlp.gate_proj.weight" in s["selected"]
    out_of_domain = record["quality"]["heldout_corpus"]
    assert out_of_domain["corpus"] == "other" and out_of_domain["tokens"] > 0
    assert out_of_domain["student_perplexity"] != record["quality"]["student_perplexity"]
    student = load_hf_folder(tmp_path / "distill" / "student")
    assert student.cfg.num_hidden_layers == 3 and student.cfg.intermediate_size == 64


def test_a_larger_teacher_chat_corpus_starts_from_a_smaller_ones_whole_batches(tmp_path, monkeypatch):
    """Batch b is seeded by its index alone: 7 conversations after 4 write only the batches 4 did not fill, and
    equal 7 written from nothing."""
    from edgedistil.sources import teacher_chat

    teacher = tiny_teacher(tmp_path / "chat-teacher", TEXT, chat=True)
    small = teacher_chat.ChatSettings(conversations=4, query_tokens=6, answer_tokens=8, batch_size=2)
    large = dataclasses.replace(small, conversations=7)
    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "fresh"))
    fresh = teacher_chat.teacher_chat_corpus(teacher, large, log=lambda *_: None)

    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "grown"))
    teacher_chat.teacher_chat_corpus(teacher, small, log=lambda *_: None)
    other = dataclasses.replace(small, conversations=7, answer_tokens=9)  # other settings: nothing to reuse
    written = []
    write = teacher_chat._write_batch
    monkeypatch.setattr(teacher_chat, "_write_batch", lambda *a: written.append(a[-1]) or write(*a))
    grown = teacher_chat.teacher_chat_corpus(teacher, large, log=lambda *_: None)
    assert written == [2, 3] and grown.text == fresh.text
    written.clear()
    teacher_chat.teacher_chat_corpus(teacher, other, log=lambda *_: None)
    assert written == [0, 1, 2, 3]
