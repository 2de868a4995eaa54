"""The quality evaluation: benchmark formats, the log-likelihood scorer, the comparison figures, chat behaviour
metrics and `edgedistil eval`, on tiny in-process models and the items in tests/fixtures/eval/."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgedistil.distill.data import load_tokenizer
from edgedistil.errors import EdgeError
from edgedistil.eval import behaviour, run, score, tasks
from edgedistil.model import load_hf_folder
from edgedistil.sources import load_corpus, tiny_teacher
from tests.conftest import edgedistil

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny teacher and a smaller student with the same tokenizer (the BPE is trained on the same text)."""
    root = tmp_path_factory.mktemp("eval-models")
    text = load_corpus("tiny").text
    teacher = tiny_teacher(root / "teacher", text, seed=0, layers=2)
    student = tiny_teacher(root / "student", text, seed=1, layers=1)
    return teacher, student, text


def biased(model, tok, text: str, bias: float):
    """`model` with its LM head replaced by one that ignores the context and adds `bias` to the logits of the
    tokens of `text`: a model built to prefer one answer."""
    head = torch.nn.Linear(model.cfg.hidden_size, model.cfg.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    ids = tok.encode(" " + text, add_special_tokens=False).ids
    with torch.no_grad():
        head.bias[ids] = bias
    model.lm_head = head
    return model, set(ids)


def reference_ll(model, ctx: list[int], cont: list[int]) -> float:
    """One unpadded forward per request: what the batched scorer must equal."""
    with torch.no_grad():
        lp = F.log_softmax(model(torch.tensor([ctx + cont])[:, :-1]).float(), -1)[0]
    return float(lp[len(ctx) - 1:].gather(-1, torch.tensor(cont)[:, None]).sum())


def test_formats_follow_lm_eval():
    row = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "endings": ["is using wrap [title] to wrap skis.", "starts  pulling up roofing."], "label": "1"}
    assert tasks.hellaswag_item(row) == {"context": "Roof shingle removal: A man is sitting on a roof. He",
                                         "choices": ["is using wrap. to wrap skis.", "starts pulling up roofing."],
                                         "gold": 1}
    assert tasks.piqa_item({"goal": "Dry shoes?", "sol1": "a", "sol2": "b", "label": 1})["context"] == \
        "Question: Dry shoes?\nAnswer:"
    wino = tasks.winogrande_item({"sentence": "Sarah beat Maria so _ won the cup.", "option1": "Sarah",
                                  "option2": "Maria", "answer": "1"})
    assert wino == {"context": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"],
                    "choices": ["won the cup.", "won the cup."], "gold": 0}
    assert tasks.spread(list(range(10)), 3) == [0, 3, 6] and tasks.spread([1, 2], 5) == [1, 2]


def test_encode_pair_moves_trailing_space_to_the_continuation(tiny_tokenizer):
    ctx, cont = score.encode_pair(tiny_tokenizer, "Answer: ", "yes")
    assert ctx == tiny_tokenizer.encode("Answer:", add_special_tokens=False).ids
    assert ctx + cont == tiny_tokenizer.encode("Answer: yes", add_special_tokens=False).ids


def test_batched_scores_equal_one_forward_per_request(tiny):
    teacher, _, _ = tiny
    model, tok = load_hf_folder(teacher), load_tokenizer(teacher)
    items = tasks.read_items(FIXTURES / "hellaswag.jsonl") + tasks.read_items(FIXTURES / "winogrande.jsonl")
    reqs = [r for it in items for r in score.requests(tok, it)]
    batched = score.loglikelihoods(model, reqs, batch_tokens=64)  # several batches of unequal widths
    for (ctx, cont), ll in zip(reqs, batched):
        assert ll == pytest.approx(reference_ll(model, ctx, cont), abs=1e-3)


def test_scorer_picks_the_answer_a_model_prefers(tiny):
    teacher, _, _ = tiny
    tok = load_tokenizer(teacher)
    model, favoured = biased(load_hf_folder(teacher), tok, "value of the expression", bias=8.0)
    others = ["cat dog bird", "red green blue"]
    for o in others:  # the distractors share no token with the favoured answer
        assert not favoured & set(tok.encode(" " + o, add_special_tokens=False).ids)
    items = [{"context": c, "choices": others[:g] + ["value of the expression"] + others[g:], "gold": g}
             for g, c in enumerate(["Question: What is returned?\nAnswer:", "The result is", "It prints"])]
    res = score.score_items(model, tok, items)
    assert res["acc"] == 100.0 and res["acc_norm"] == 100.0


def test_acc_and_acc_norm_differ_on_a_crafted_case(tiny):
    """A weak bias towards " the": one unfavoured short token beats three favoured ones in total log-likelihood,
    but per character the long answer wins."""
    teacher, _, _ = tiny
    tok = load_tokenizer(teacher)
    model, _ = biased(load_hf_folder(teacher), tok, "the", bias=2.0)
    item = {"context": "Answer:", "choices": ["x", "the the the"], "gold": 0}
    res = score.score_items(model, tok, [item])
    lls = res["loglikelihoods"][0]
    assert lls[0] > lls[1] and lls[0] / 1 < lls[1] / 11  # the crafted premise holds
    assert res["acc"] == 100.0 and res["acc_norm"] == 0.0


def test_acc_norm_divides_by_characters():
    assert score.pick([-10.0, -12.0], ["ab", "a much longer answer"]) == (0, 1)
    assert score.pick([-3.0, -2.0], ["abc", "abc"]) == (1, 1)


def test_margin_kept_and_ratio():
    assert run.margin_kept(37.5, 50.0, 25.0) == 0.5
    assert run.margin_kept(25.0, 50.0, 25.0) == 0.0
    assert run.margin_kept(60.0, 50.0, 50.0) is None  # a teacher at chance has no margin to keep
    row = run.compare_task("piqa", {"n": 10, "acc": 55.0, "acc_norm": 60.0}, {"n": 10, "acc": 70.0, "acc_norm": 70.0})
    assert row["margin_kept"] == {"acc": 0.25, "acc_norm": 0.5}
    assert row["ratio"]["acc_norm"] == round(60 / 70, 4)
    assert row["student"]["stderr"] == round(100 * (0.6 * 0.4 / 10) ** 0.5, 2)  # of the headline metric
    rows = {"piqa": row, "arc_easy": run.compare_task("arc_easy", {"n": 4, "acc": 50.0, "acc_norm": 0.0},
                                                      {"n": 4, "acc": 75.0, "acc_norm": 0.0})}
    mean = run.mean_row(rows)  # piqa's headline is acc_norm, arc_easy's acc
    assert mean["student"] == 55.0 and mean["teacher"] == 72.5 and mean["margin_kept"] == 0.5
    # pooled: (10 + 25) / (20 + 50), each task weighed by the margin its teacher has
    assert mean["margin_kept_pooled"] == 0.5
    rows["arc_challenge"] = run.compare_task("arc_challenge", {"n": 4, "acc": 21.0, "acc_norm": 21.0},
                                             {"n": 4, "acc": 26.0, "acc_norm": 26.0})
    mean = run.mean_row(rows)  # a teacher one point above chance: its share (-4) swamps the mean, not the pool
    assert mean["margin_kept"] == round((0.5 + 0.5 - 4.0) / 3, 4)
    assert mean["margin_kept_pooled"] == round((10 + 25 - 4) / (20 + 50 + 1), 4)
    rows["winogrande"] = run.compare_task("winogrande", {"n": 4, "acc": 60.0, "acc_norm": 60.0},
                                          {"n": 4, "acc": 47.5, "acc_norm": 47.5})
    assert run.mean_row(rows)["margin_kept_pooled"] == mean["margin_kept_pooled"]  # teacher below chance: left out


def test_degenerate_detector():
    assert behaviour.degenerate("")
    assert behaviour.degenerate("\n" * 25)
    assert behaviour.degenerate("the God, and the God, and the God, and the God")
    assert behaviour.degenerate(' enthusrocy("--cli("-- clicliclicliclicliclicli')
    assert not behaviour.degenerate("The capital of France is Paris.")
    assert not behaviour.degenerate("Add an ice cube, stir, and add another ice cube.")


def test_rouge_l_known_values():
    assert behaviour.rouge_l("The cat sat on the mat.", "the cat sat on the mat") == 1.0
    assert behaviour.rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert behaviour.rouge_l("dogs bark", "the cat sat") == 0.0
    assert behaviour.rouge_l("", "anything") == 0.0


def test_answers_from_a_folder_whose_weights_are_a_lone_shard(tiny, tmp_path):
    """torchtune's checkpointer writes model-00001-of-00001.safetensors and no index, which transformers'
    from_pretrained does not find; the chat answers read it as they read model.safetensors."""
    import shutil

    teacher, _, _ = tiny
    shard = tmp_path / "torchtune-student"
    shutil.copytree(teacher, shard)
    (shard / "model.safetensors").rename(shard / "model-00001-of-00001.safetensors")
    prompts = ["hello there", "tell me more"]
    want = behaviour.generate_answers(teacher, prompts, new_tokens=8)
    assert behaviour.generate_answers(shard, prompts, new_tokens=8) == want
    assert all(a["tokens"] > 0 for a in want["answers"])  # something was generated to compare


def test_a_trimmed_head_answers_as_shipped(tiny, tmp_path):
    """A student folder with head_rows.json answers with the ids it keeps only, as its exports decode; keeping
    every id the whole head produced changes nothing."""
    import shutil

    from edgedistil.model import write_head_rows

    teacher, _, _ = tiny
    prompts = ["hello there", "tell me more"]
    whole = behaviour.generate_answers(teacher, prompts, new_tokens=8)
    used = sorted({i for a in whole["answers"] for i in a["ids"]})
    vocab = json.loads((teacher / "config.json").read_text())["vocab_size"]
    unused = [i for i in range(vocab) if i not in used]
    same, cut = tmp_path / "same", tmp_path / "cut"
    for folder, kept in ((same, used + unused[:50]), (cut, unused)):
        shutil.copytree(teacher, folder)
        write_head_rows(folder, sorted(kept), vocab, "a test")
    assert whole["head_rows"] is None
    kept_all = behaviour.generate_answers(same, prompts, new_tokens=8)
    assert kept_all["head_rows"] == len(used) + 50
    assert [a["ids"] for a in kept_all["answers"]] == [a["ids"] for a in whole["answers"]]
    trimmed = behaviour.generate_answers(cut, prompts, new_tokens=8)
    ids = [i for a in trimmed["answers"] for i in a["ids"]]
    assert ids and not set(ids) & set(used)  # answered, and never with an id the cut head left out


def test_no_repeat_ngram_keeps_every_answer_free_of_repeated_phrases(tiny):
    """transformers' no_repeat_ngram_size over the whole context, or (scope "answer") over the answer alone."""
    teacher, _, _ = tiny
    prompts = ["hello there", "tell me more", "the", "def f(x):"]

    def bigrams(ids):
        return [tuple(ids[i:i + 2]) for i in range(len(ids) - 1)]

    greedy = behaviour.generate_answers(teacher, prompts, new_tokens=48)
    assert any(len(set(bigrams(a["ids"]))) < len(bigrams(a["ids"])) for a in greedy["answers"])  # it loops
    for scope in ("context", "answer"):
        out = behaviour.generate_answers(teacher, prompts, new_tokens=48, no_repeat_ngram=2, penalty_scope=scope)
        for a in out["answers"]:
            assert a["ids"] and len(set(bigrams(a["ids"]))) == len(bigrams(a["ids"]))


def test_chat_prompts_ship_with_the_package():
    prompts = behaviour.chat_prompts()
    assert len(prompts) >= 50 and len(set(prompts)) == len(prompts)


def test_bad_benchmark_line_names_the_line(tmp_path):
    bad = tmp_path / "piqa.jsonl"
    bad.write_text('{"context": "q", "choices": ["a", "b"], "gold": 0}\n'
                   '{"context": "q", "choices": ["a"], "gold": 3}\n')
    with pytest.raises(EdgeError, match="line 2 is not a benchmark item"):
        tasks.read_items(bad)


def test_run_eval_caches_the_teacher(tiny, tmp_path, monkeypatch):
    teacher, student, text = tiny
    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "cache"))
    files = {p.stem: p for p in FIXTURES.glob("*.jsonl")}
    logs = []
    kw = dict(benchmarks=files, prompts=behaviour.chat_prompts()[:4], new_tokens=8, heldout_text=text[-4000:])
    first = run.run_eval(student, teacher, tmp_path / "a.json", log=logs.append, **kw)
    assert not any("from the cache" in m for m in logs)
    second = run.run_eval(student, teacher, tmp_path / "b.json", log=logs.append, **kw)
    assert any("from the cache" in m for m in logs)
    assert first["benchmarks"] == second["benchmarks"]
    assert json.loads((tmp_path / "b.json").read_text())["schema"] == run.SCHEMA
    b = first["benchmarks"]
    assert set(b) == {*tasks.TASKS, "mean"} and b["piqa"]["n"] == 3 and "margin_kept" in b["hellaswag"]
    assert len(first["behaviour"]["answers"]) == 4 and "rouge_l" in first["behaviour"]["answers"][0]
    assert 0 <= first["heldout"]["top1_agreement_with_teacher"] <= 1


def tiny_run_folder(tmp_path: Path, teacher: Path, student: Path, text: str) -> Path:
    """The parts of a run folder `edgedistil eval RUN` reads (a real build's layout)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(student, out / "distill" / "student")
    (out / "distill" / "record.json").write_text(json.dumps({"teacher": str(teacher)}))
    (out / "distill" / "heldout.txt").write_text(text[-3000:])
    return out


def test_eval_cli_on_a_run_folder(tiny, tmp_path):
    teacher, student, text = tiny
    out = tiny_run_folder(tmp_path, teacher, student, text)
    proc = edgedistil("eval", out, "--benchmarks", FIXTURES, "--new-tokens", "4",
                      env={"EDGEDISTIL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "eval" / "eval.json").read_text())
    assert rec["teacher"] == str(teacher) and rec["heldout"]["tokens"] > 0
    assert rec["behaviour"]["prompts"] == len(behaviour.chat_prompts())
    assert json.loads(proc.stdout)["tasks"] == 5


@pytest.mark.parametrize("make", ["missing", "not_hf"])
def test_eval_cli_bad_input(tmp_path, make):
    src = tmp_path / "src"
    if make == "not_hf":
        src.mkdir()
        (src / "notes.txt").write_text("not a model")
    out = tmp_path / "eval.json"
    proc = edgedistil("eval", src, "--out", out, "--benchmarks", FIXTURES,
                      env={"EDGEDISTIL_CACHE": str(tmp_path / "cache")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "fix:" in lines[0], proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".eval.json*"))
