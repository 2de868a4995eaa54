"""The distill stage on tiny models, in process: each KD flavour, the pre-flight, JSONL data, sequence-level KD."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgedistil.build import recipe_with
from edgedistil.config import load_recipe
from edgedistil.distill.train import run_distill
from edgedistil.errors import EdgeError
from edgedistil.model import EdgeLM, load_hf_folder
from edgedistil.sources import load_corpus, tiny_teacher

from conftest import TINY


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("tiny")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, corpus):
    return tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", corpus.text, seed=0)


@pytest.fixture(scope="module")
def narrow_dir(tmp_path_factory, corpus):
    """Another model on the same tokenizer (same corpus, same vocab size) but half the width: a ready student."""
    return tiny_teacher(tmp_path_factory.mktemp("narrow") / "s", corpus.text, seed=1, hidden_size=32, layers=2)


@pytest.fixture(scope="module")
def other_vocab_dir(tmp_path_factory, corpus):
    """A model with its own, smaller tokenizer: logit KD cannot pair its tokens with the teacher's."""
    return tiny_teacher(tmp_path_factory.mktemp("other") / "s", corpus.text, seed=2, vocab_size=400, layers=2)


def recipe(**sections):
    base = recipe_with(load_recipe(TINY), distill={"steps": 4, "eval_tokens": 256, "preflight_export": False})
    for name, values in sections.items():
        base = recipe_with(base, **{name: {**base.section(name), **values}})
    return base


def curve(out):
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["reverse_kl", "jsd"])
def test_reverse_kl_and_jsd_train_a_student(tmp_path, teacher_dir, corpus, loss):
    out = tmp_path / "distill"
    record = run_distill(teacher_dir, corpus, recipe(distill={"loss": loss, "beta": 0.3}), out, log=lambda m: None)
    assert record["config"]["loss"] == loss and loss in record["flavour"]
    rows = curve(out)
    assert len(rows) == 4 and all(r["kl"] > 0 for r in rows)
    student = load_hf_folder(out / "student")
    teacher = load_hf_folder(teacher_dir)
    assert not torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)


def test_hidden_state_kd_learns_a_projection_to_a_wider_teacher(tmp_path, teacher_dir, narrow_dir, corpus):
    out = tmp_path / "distill"
    r = recipe(student={"source": str(narrow_dir)},
               distill={"feature_weight": 1.0, "feature_loss": "cosine", "feature_layers": [2, 4]})
    record = run_distill(teacher_dir, corpus, r, out, log=lambda m: None)
    assert record["feature_kd"] == {"teacher_hidden_states": [2, 4], "loss": "cosine", "projection": True}
    rows = curve(out)
    assert all(0 < row["feature"] <= 2 for row in rows)
    t2 = r.distill.temperature ** 2
    assert rows[0]["loss"] == pytest.approx(0.9 * t2 * rows[0]["kl"] + 0.1 * rows[0]["ce"] + rows[0]["feature"],
                                            rel=1e-4)
    assert load_hf_folder(out / "student").cfg.hidden_size == 32  # projections train the student, are not shipped


@pytest.mark.parametrize("init, hidden_states", [("even", [1, 4]), ([1, 2], [2, 3]), ("random", [2, 4])])
def test_default_feature_map_follows_the_layers_the_student_was_copied_from(tmp_path, teacher_dir, corpus, init,
                                                                           hidden_states):
    """Each student layer matches the output of the teacher layer it was copied from (hidden state k + 1 for
    layer k); a random student, copied from none, matches evenly spaced ones."""
    record = run_distill(teacher_dir, corpus, recipe(distill={"feature_weight": 0.5}, student={"init": init}),
                         tmp_path / "d", log=lambda m: None)
    assert record["feature_kd"]["teacher_hidden_states"] == hidden_states
    assert record["feature_kd"]["projection"] is False


def test_preflight_refuses_another_vocabulary_and_names_sequence_kd(tmp_path, teacher_dir, other_vocab_dir, corpus):
    out = tmp_path / "distill"
    with pytest.raises(EdgeError, match='method = "sequence"') as e:
        run_distill(teacher_dir, corpus, recipe(student={"source": str(other_vocab_dir)}), out, log=lambda m: None)
    assert "400" in e.value.problem and "512" in e.value.problem
    assert not out.exists()


def test_preflight_records_estimates_and_trial_export(tmp_path, teacher_dir, corpus):
    r = recipe(distill={"preflight_export": True, "steps": 1}, student={"intermediate_size": 96, "heads": 2})
    record = run_distill(teacher_dir, corpus, r, tmp_path / "d", log=lambda m: None)
    pre = record["preflight"]
    n = sum(p.numel() for p in load_hf_folder(tmp_path / "d" / "student").parameters())
    assert pre["estimate"]["parameters"] == n == record["student"]["parameters"]
    assert pre["estimate"]["fp32_mb"] == round(4 * n / 1e6, 1) and pre["estimate"]["train_ram_mb"] > 0
    assert pre["trial_export"]["onnx_bytes"] > 4 * n * 0.9 and pre["trial_export"]["max_abs_diff"] < 1e-4
    assert record["student"]["heads"] == 2 and "model.layers.*.mlp.up_proj.weight" in record["student"]["selected"]
    assert record["peak_rss_mb"] > 0


def test_preflight_catches_a_student_that_cannot_export(tmp_path, teacher_dir, corpus, monkeypatch):
    # a student whose decode step uses an op the ONNX exporter has no symbolic for (an FFT): training would run,
    # shipping would not; the pre-flight must stop it before the first step
    plain_step = EdgeLM.step

    def unexportable_step(self, input_ids, position, k_cache, v_cache):
        logits, k, v = plain_step(self, input_ids, position, k_cache, v_cache)
        return torch.fft.rfft(logits).real[..., : logits.shape[-1]], k, v

    monkeypatch.setattr(EdgeLM, "step", unexportable_step)
    out = tmp_path / "distill"
    with pytest.raises(EdgeError, match="does not export to ONNX") as e:
        run_distill(teacher_dir, corpus, recipe(distill={"preflight_export": True}), out, log=lambda m: None)
    assert "preflight_export = false" in e.value.fix
    assert not out.exists()


def test_jsonl_corpus_trains_on_whole_documents(tmp_path, teacher_dir, corpus):
    from edgedistil.sources.corpus import load_corpus as load

    path = tmp_path / "docs.jsonl"
    lines = corpus.text.splitlines()
    docs = ["\n".join(lines[i:i + 5]).strip("\n") for i in range(0, len(lines), 5)]  # multi-line documents
    docs = [d for d in docs if d.strip()]
    path.write_text("".join(json.dumps({"text": doc, "id": i}) + "\n" for i, doc in enumerate(docs)))
    jsonl = load(str(path))
    assert jsonl.text == "\n".join(docs) and jsonl.documents == docs
    run_distill(teacher_dir, jsonl, recipe(distill={"steps": 1}, data={"windows": "documents"}), tmp_path / "d",
                log=lambda m: None)
    assert (tmp_path / "d" / "heldout.txt").read_text() == "\n".join(docs[9::10])  # tiny.toml holds out 0.1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(EdgeError, match="line 2"):
        load(str(bad))


def test_grad_accumulation_equals_one_big_batch(tmp_path, teacher_dir, corpus):
    one = run_distill(teacher_dir, corpus, recipe(distill={"steps": 2}), tmp_path / "a", log=lambda m: None)
    four = run_distill(teacher_dir, corpus, recipe(distill={"steps": 2, "grad_accum": 4}), tmp_path / "b",
                       log=lambda m: None)
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # summation order only
    assert one["final_loss"] == pytest.approx(four["final_loss"], rel=1e-4)


def test_sequence_kd_with_another_tokenizer(tmp_path, teacher_dir, other_vocab_dir, corpus):
    r = recipe(distill={"method": "sequence"}, student={"source": str(other_vocab_dir)},
               sequence={"num_prompts": 6, "prompt_tokens": 8, "new_tokens": 12, "batch_size": 4})
    out = tmp_path / "distill"
    record = run_distill(teacher_dir, corpus, r, out, log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "distill-sequence" / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(row["text"] == row["prompt"] + row["completion"] for row in rows)
    assert sorted(row["index"] for row in rows) == list(range(6))
    assert record["sequence_kd"]["completions"] == 6 and "sequence-level" in record["flavour"]
    q = record["quality"]
    assert q["student_perplexity"] > 1 and q["teacher_perplexity"] is None and "tokenizer" in q["null_reason"]
    student = load_hf_folder(out / "student")
    assert student.cfg.vocab_size == 400  # the student kept its own vocabulary
    assert json.loads((out / "student" / "tokenizer.json").read_text())["model"]["vocab"] == json.loads(
        (other_vocab_dir / "tokenizer.json").read_text())["model"]["vocab"]


def test_teacher_generation_resumes_to_the_same_texts(tmp_path, teacher_dir, corpus):
    from edgedistil.distill.data import load_tokenizer, tokenize
    from edgedistil.distill.sequence import read_prompts, teacher_texts

    cfg = recipe(sequence={"num_prompts": 6, "prompt_tokens": 8, "new_tokens": 10, "batch_size": 2}).sequence
    tok, teacher = load_tokenizer(teacher_dir), load_hf_folder(teacher_dir)
    prompts = read_prompts("", tokenize(tok, corpus.text), tok, cfg)
    full, _ = teacher_texts(teacher, teacher_dir, tok, prompts, cfg, tmp_path / "a", log=lambda m: None)
    part = tmp_path / "b"
    teacher_texts(teacher, teacher_dir, tok, prompts, cfg, part, log=lambda m: None)
    lines = (part / "completions.jsonl").read_text().splitlines()
    # as if killed while writing the third batch: two whole batches and half a line
    (part / "completions.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    resumed, rec = teacher_texts(teacher, teacher_dir, tok, prompts, cfg, part, log=lambda m: None)
    assert rec["resumed_after"] == 4 and resumed == full
    greedy = recipe(sequence={**vars(cfg), "temperature": 0.0}).sequence
    g1, _ = teacher_texts(teacher, teacher_dir, tok, prompts, greedy, tmp_path / "g", log=lambda m: None)
    assert g1 != full  # the sampling settings reach the generator


def test_teacher_topk_cache_trains_like_the_live_teacher_and_is_reused(tmp_path, teacher_dir, corpus, monkeypatch):
    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    from edgedistil.distill import teacher_cache

    vocab = load_hf_folder(teacher_dir).cfg.vocab_size
    live = run_distill(teacher_dir, corpus, recipe(), tmp_path / "live" / "distill", log=lambda m: None)
    # k = the whole vocabulary: the cached loss is the live loss up to the fp16 storage of the teacher's logits
    cached = run_distill(teacher_dir, corpus, recipe(distill={"teacher_topk": vocab}), tmp_path / "c" / "distill",
                         log=lambda m: None)
    info = cached["teacher_cache"]
    assert info["blocks"] == 4 * 8 and info["k"] == vocab and live["teacher_cache"] is None
    assert info["built_seconds"] > 0 and 1 <= info["distinct_blocks"] <= info["blocks"]
    # by default the cache is shared through the edgedistil cache, one folder per teacher, data and sampling order
    assert (Path(info["folder"]) / "identity.json").is_file()
    assert Path(info["folder"]).parent == tmp_path / "cache" / "teacher-logits"
    for a, b in zip(curve(tmp_path / "live" / "distill"), curve(tmp_path / "c" / "distill")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3) and b["ce"] == pytest.approx(a["ce"], rel=1e-4)

    # another temperature and alpha reuse the cache: the teacher is never run to build it again
    monkeypatch.setattr(teacher_cache, "build_cache", lambda *a, **k: pytest.fail("the cache was rebuilt"))
    other = run_distill(teacher_dir, corpus, recipe(distill={"teacher_topk": vocab, "temperature": 1.0, "alpha": 0.5}),
                        tmp_path / "c" / "distill", log=lambda m: None)
    assert other["teacher_cache"]["folder"] == info["folder"] and other["teacher_cache"]["built_seconds"] is None
    assert curve(tmp_path / "c" / "distill")[0]["loss"] != pytest.approx(curve(tmp_path / "live" / "distill")[0]["loss"])

    # a cache made for another run is refused, naming what differs
    with pytest.raises(EdgeError, match=r"made for another run \(differs in: steps\)"):
        run_distill(teacher_dir, corpus, recipe(distill={"teacher_topk": vocab, "steps": 5,
                                                         "teacher_cache": info["folder"]}),
                    tmp_path / "d" / "distill", log=lambda m: None)


def test_topk_loss_with_the_whole_vocabulary_is_forward_kl():
    from edgedistil.distill.losses import kd_loss
    from edgedistil.distill.teacher_cache import topk_kd_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    top = t.topk(11, dim=-1)
    full, _ = kd_loss(s, t, labels, 0.7, 2.0)
    sparse, _ = topk_kd_loss(s, top.indices, top.values, labels, 0.7, 2.0)
    assert sparse.item() == pytest.approx(full.item(), rel=1e-5)
    few, parts = topk_kd_loss(s, top.indices[..., :3], top.values[..., :3], labels, 0.7, 2.0)
    assert parts["kl"] >= 0 and few.item() != pytest.approx(full.item())


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_loss_gradient_is_autograds(temperature):
    """The loss's hand-written backward gives autograd's gradient of the same formula, in the logits' dtype."""
    import torch.nn.functional as F

    from edgedistil.distill.teacher_cache import topk_kd_loss

    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 5, 40, generator=g, dtype=torch.float64)
    top = torch.randn(2, 5, 40, generator=g).topk(6, dim=-1)
    labels = torch.randint(0, 40, (2, 5), generator=g)
    ours = s.clone().requires_grad_()
    loss, parts = topk_kd_loss(ours, top.indices, top.values.half(), labels, 0.7, temperature)
    loss.backward()
    ref = s.clone().requires_grad_()
    flat = ref.reshape(-1, 40)
    log_p_t = F.log_softmax(top.values.half().double().reshape(-1, 6) / temperature, dim=-1)
    log_p_s = F.log_softmax(flat / temperature, dim=-1).gather(-1, top.indices.reshape(-1, 6))
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    ce = F.cross_entropy(flat, labels.reshape(-1))
    expected = 0.7 * temperature**2 * kl + 0.3 * ce
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the teacher side runs in fp32
    assert parts["kl"] == pytest.approx(kl.item()) and parts["ce"] == pytest.approx(ce.item())
    assert torch.allclose(ours.grad, ref.grad, atol=1e-7)
    half = s.bfloat16().requires_grad_()
    topk_kd_loss(half, top.indices, top.values.half(), labels, 0.7, temperature)[0].backward()
    assert half.grad.dtype == torch.bfloat16 and torch.allclose(half.grad.double(), ref.grad, atol=2e-3)


def test_topk_loss_over_a_trimmed_heads_rows_leaves_out_the_ids_outside_them():
    """Training over a trimmed head's rows: a teacher id outside them (IGNORE) drops out of the teacher's
    renormalized top-k, a label outside them out of CE, and the gradient is autograd's of that formula."""
    import torch.nn.functional as F

    from edgedistil.distill.teacher_cache import IGNORE, topk_kd_loss

    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 4, 30, generator=g, dtype=torch.float64)
    top = torch.randn(3, 4, 30, generator=g).topk(5, dim=-1)
    ids, labels = top.indices.clone(), torch.randint(0, 30, (3, 4), generator=g)
    ids[0, 0, :2] = IGNORE  # two of a position's teacher ids are outside the rows
    ids[1, 2, :] = IGNORE  # none of this position's are: it has no KD term
    labels[2, 1] = labels[0, 3] = IGNORE
    ours = s.clone().requires_grad_()
    loss, parts = topk_kd_loss(ours, ids, top.values, labels, 0.6, 1.0)
    loss.backward()
    ref = s.clone().requires_grad_()
    flat, t, i, y = ref.reshape(-1, 30), top.values.double().reshape(-1, 5), ids.reshape(-1, 5), labels.reshape(-1)
    has = (i != IGNORE).any(-1)
    log_p_t = F.log_softmax(t.masked_fill(i == IGNORE, float("-inf"))[has], dim=-1)
    log_p_s = F.log_softmax(flat, dim=-1)[has].gather(-1, i[has].clamp(min=0))
    kl = torch.where(log_p_t.exp() > 0, log_p_t.exp() * (log_p_t - log_p_s), 0.0).sum(-1).mean()
    ce = F.cross_entropy(flat, y, ignore_index=IGNORE)
    expected = 0.6 * kl + 0.4 * ce
    expected.backward()
    assert int(has.sum()) == 11 and int((y != IGNORE).sum()) == 10
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["kl"] == pytest.approx(kl.item()) and parts["ce"] == pytest.approx(ce.item())
    assert torch.allclose(ours.grad, ref.grad, atol=1e-7)


def test_cached_batches_follow_the_cache_then_reshuffle():
    from edgedistil.distill.teacher_cache import cached_batch

    n = 6
    cache = {"blocks": torch.arange(n)[:, None].repeat(1, 3), "ids": torch.zeros(n, 2, 1, dtype=torch.int32),
             "logits": torch.zeros(n, 2, 1)}
    first = [cached_batch(cache, step, 2, seed=0)[0][:, 0].tolist() for step in range(3)]
    assert first == [[0, 1], [2, 3], [4, 5]]
    second = sum((cached_batch(cache, step, 2, seed=0)[0][:, 0].tolist() for step in range(3, 6)), [])
    assert sorted(second) == list(range(n)) and second != list(range(n))
    assert cached_batch(cache, 4, 2, seed=0)[0].tolist() == cached_batch(cache, 4, 2, seed=0)[0].tolist()


def test_the_cache_runs_the_teacher_once_per_distinct_window_and_keeps_the_draw_order(tmp_path, teacher_dir):
    from edgedistil.distill.data import sample_blocks
    from edgedistil.distill.teacher_cache import build_cache, cached_batch, describe, drawn_blocks, load_cache

    teacher = load_hf_folder(teacher_dir).eval()
    ids = np.random.default_rng(0).integers(0, teacher.cfg.vocab_size, 200).astype(np.int32)
    starts = np.array([0, 40, 90, 150])  # four conversations: 12 draws of 3 blocks can hold at most 4 distinct ones
    identity = {"seed": 3, "batch_size": 3, "steps": 4, "seq_len": 16, "k": 5}
    calls = []
    teacher.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    build_cache(teacher, ids, starts, identity, tmp_path / "c", "cpu", log=lambda m: None)
    cache = load_cache(tmp_path / "c", identity)
    gen = torch.Generator().manual_seed(3)
    draws = torch.cat([sample_blocks(ids, 3, 17, gen, starts) for _ in range(4)])
    assert torch.equal(drawn_blocks(cache).long(), draws)
    assert sum(calls) == len(cache["blocks"]) <= 4 < len(draws)
    assert describe(cache, tmp_path / "c")["blocks"] == 12
    # the first pass gives the live run's batches, with the logits of each block's own teacher pass
    for step in range(4):
        x, top_ids, top_logits = cached_batch(cache, step, 3, seed=3)
        assert torch.equal(x, draws[step * 3:(step + 1) * 3])
        logits = teacher(x[:, :-1]).float()
        assert torch.allclose(top_logits, logits.topk(5, dim=-1).values, atol=1e-2)
        assert torch.allclose(logits.gather(-1, top_ids), top_logits, atol=1e-2)


def test_frozen_embeddings_stay_the_teachers_while_the_layers_train(tmp_path, teacher_dir, corpus):
    out = tmp_path / "distill"
    run_distill(teacher_dir, corpus, recipe(distill={"freeze_embeddings": True}), out, log=lambda m: None)
    student, teacher = load_hf_folder(out / "student"), load_hf_folder(teacher_dir)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)  # tied: the head is the same tensor
    assert not torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)


def test_precision_picks_bf16_only_where_asked_or_native(monkeypatch):
    from edgedistil.distill import train

    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    assert train.pick_device("auto", "auto") == ("cpu", None)  # emulated bf16 gains nothing: fp32
    assert train.pick_device("cpu", "bf16") == ("cpu", torch.bfloat16)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    assert train.pick_device("auto", "auto") == ("cpu", torch.bfloat16)
    assert train.pick_device("auto", "fp32") == ("cpu", None)


def test_bf16_autocast_on_the_cpu_trains_and_says_so(tmp_path, teacher_dir, corpus):
    out = tmp_path / "distill"
    record = run_distill(teacher_dir, corpus, recipe(distill={"precision": "bf16", "steps": 8}), out,
                         log=lambda m: None)
    assert record["device"] == "cpu bf16 autocast"
    losses = [row["loss"] for row in curve(out)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    # autocast keeps the master weights fp32: the saved student is an fp32 model
    assert load_hf_folder(out / "student").model.layers[0].mlp.up_proj.weight.dtype == torch.float32


def test_teacher_correction_fine_tunes_the_teacher_once_and_it_teaches(tmp_path, teacher_dir, corpus, monkeypatch):
    """[distill] teacher_correction_steps: the teacher is fine-tuned with CE on the training split (its held-out
    perplexity falls), kept in the cache as an HF folder, and is the teacher the student is built from and learns
    from; a second run reuses it, and the teacher as given is left as it was."""
    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    from edgedistil.distill import correction
    from edgedistil.records import folder_fingerprint

    before = folder_fingerprint(teacher_dir)
    r = recipe(distill={"teacher_correction_steps": 12, "teacher_correction_lr": 3e-3, "teacher_topk": 16})
    record = run_distill(teacher_dir, corpus, r, tmp_path / "a" / "distill", log=lambda m: None)
    fix = record["teacher_correction"]
    folder = Path(fix["folder"])
    assert folder.parent == tmp_path / "cache" / "teachers-corrected" and record["teacher"] == str(teacher_dir)
    assert fix["steps"] == 12 and fix["source"] == str(teacher_dir)
    assert fix["heldout_perplexity_after"] < 0.9 * fix["heldout_perplexity_before"]
    assert fix["loss_last"] < fix["loss_first"] and record["quality_teacher"].startswith("corrected")
    assert (folder / "tokenizer.json").is_file() and folder_fingerprint(teacher_dir) == before
    corrected, original = load_hf_folder(folder), load_hf_folder(teacher_dir)
    assert not torch.equal(corrected.model.norm.weight, original.model.norm.weight)
    # the student learned from the corrected teacher: its logits cache is that teacher's, and the held-out teacher
    # perplexity in its record is the corrected one's
    assert record["teacher_cache"]["identity"]["teacher"] == folder_fingerprint(folder)
    assert record["quality"]["teacher_perplexity"] == pytest.approx(fix["heldout_perplexity_after"], rel=1e-3)

    monkeypatch.setattr(correction, "correct_teacher", lambda *a, **k: pytest.fail("the teacher was corrected again"))
    again = run_distill(teacher_dir, corpus, r, tmp_path / "b" / "distill", log=lambda m: None)
    assert again["teacher_correction"] == fix
    other = recipe_with(r, distill={"teacher_correction_steps": 6})  # other settings: another corrected teacher
    with pytest.raises(pytest.fail.Exception, match="corrected again"):
        run_distill(teacher_dir, corpus, other, tmp_path / "c" / "distill", log=lambda m: None)



def test_head_rows_keeps_the_rows_the_teacher_uses_and_measures_the_cut(tmp_path, teacher_dir, corpus):
    from edgedistil.distill.data import load_tokenizer
    from edgedistil.distill.evaluate import eval_windows
    from edgedistil.distill.head import always_kept, rank_rows, teacher_topk_mass
    from edgedistil.distill.data import tokenize
    from edgedistil.decoding import HEAD_FLOOR

    out = tmp_path / "distill"
    cached = {"teacher_topk": 64}
    record = run_distill(teacher_dir, corpus, recipe(student={"head_rows": 300}, distill=cached), out,
                         log=lambda m: None)
    saved = json.loads((out / "student" / "head_rows.json").read_text())
    kept = saved["kept_ids"]
    base = always_kept(load_tokenizer(out / "student"))
    assert len(kept) == 300 == saved["rows"] and kept == sorted(set(kept)) and set(base) <= set(kept)
    # chosen before training, by the teacher's probability over the training windows (its top-k cache)
    cache = load_file(str(Path(record["teacher_cache"]["folder"]) / "teacher_topk.safetensors"))
    assert kept == rank_rows(teacher_topk_mass(cache["ids"], cache["logits"], 512), base, 300)
    assert record["head"]["trained_over"] == "the whole vocabulary" and "teacher" in saved["ranked_by"]
    # transformers' generate() leaves out what the exports cannot produce
    gen = json.loads((out / "student" / "generation_config.json").read_text())
    assert sorted(gen["suppress_tokens"] + kept) == list(range(512))

    whole, shipped = load_hf_folder(out / "student", head="full"), load_hf_folder(out / "student")
    assert whole.head_rows == 512 and shipped.head_rows == 300 and not shipped.cfg.tie_word_embeddings
    text = (out / "heldout.txt").read_text()
    windows = eval_windows(tokenize(load_tokenizer(out / "student"), text), 32, 256)
    with torch.no_grad():
        full, cut = whole(windows[:, :-1]), shipped(windows[:, :-1])
    outside = torch.ones(512, dtype=torch.bool)
    outside[kept] = False
    assert torch.allclose(cut[..., kept], full[..., kept], atol=1e-5) and float(cut[..., outside].max()) < HEAD_FLOOR / 2
    # the record's cost of the cut is the share of positions where the trimmed head picks the whole head's token
    agree = float((cut.argmax(-1) == full.argmax(-1)).float().mean())
    figures = record["head"]["heldout"]
    assert figures["top1_agreement_with_whole_head"] == pytest.approx(agree, abs=1e-4)
    assert 0 < figures["probability_kept"] <= 1 and record["head"]["rows"] == 300


def test_train_head_kept_trains_over_the_kept_rows_alone(tmp_path, teacher_dir, corpus):
    """The same start, rows and first batch: over the 300 kept rows the first step's CE is lower than over the whole
    vocabulary (a softmax over fewer rows, the labels outside them left out), and the same rows ship."""
    cached = {"teacher_topk": 64}
    whole = run_distill(teacher_dir, corpus, recipe(student={"head_rows": 300}, distill=cached),
                        tmp_path / "whole" / "distill", log=lambda m: None)
    kept = run_distill(teacher_dir, corpus,
                       recipe(student={"head_rows": 300}, distill={**cached, "train_head": "kept"}),
                       tmp_path / "kept" / "distill", log=lambda m: None)
    assert kept["head"]["trained_over"] == "the 300 kept rows"
    assert whole["head"]["trained_over"] == "the whole vocabulary"
    rows = [json.loads((tmp_path / r / "distill" / "student" / "head_rows.json").read_text())["kept_ids"]
            for r in ("whole", "kept")]
    assert rows[0] == rows[1]
    assert curve(tmp_path / "kept" / "distill")[0]["ce"] < curve(tmp_path / "whole" / "distill")[0]["ce"]


def test_head_rows_below_the_bytes_and_special_tokens_is_refused_before_training(tmp_path, teacher_dir, corpus,
                                                                                 monkeypatch):
    from edgedistil.distill import prune

    def ranked(*a, **k):
        raise AssertionError("the refusal must come before the layer ranking")

    monkeypatch.setattr(prune, "cached_ranking", ranked)
    out = tmp_path / "distill"
    with pytest.raises(EdgeError, match="head_rows = 100 must be above the 257 ids always kept") as e:
        run_distill(teacher_dir, corpus, recipe(student={"head_rows": 100, "init": "auto"}), out, log=lambda m: None)
    assert "between 258 and 511, or 0" in e.value.fix  # no 16384 example for a 512-token vocabulary
    assert not out.exists()


def test_rank_rows_keeps_the_base_then_the_most_probable():
    from edgedistil.distill.head import rank_rows

    mass = torch.tensor([0.0, 5.0, 1.0, 9.0, 3.0, 9.0, 0.5], dtype=torch.float64)
    assert rank_rows(mass, [0, 6], 4) == [0, 3, 5, 6]  # ties (ids 3 and 5) by id; base kept whatever its mass
    assert rank_rows(mass, [0], 3) == [0, 3, 5]
