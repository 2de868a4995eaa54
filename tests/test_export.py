"""The ONNX export through ONNX Runtime: chunked prefill equals a full forward, and fidelity catches a planted
wrong layer. Models are tiny random Llamas built in-process."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import LlamaConfig, LlamaForCausalLM

from edgedistil.decoding import decode, prefill
from edgedistil.errors import EdgeError, read_json
from edgedistil.export.onnx import run_export
from edgedistil.fidelity import floor_verdict, measure_fidelity, teacher_forced
from edgedistil.model import load_hf_folder
from edgedistil.quantize.precision import layer_precisions
from edgedistil.runtimes.ort import OrtLM
from edgedistil.runtimes.torch_step import TorchLM

MAX_LEN, CHUNK, VOCAB = 96, 8, 97


def make_llama(folder, seed=0):
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights that matter: HF's init makes every position look alike
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if "norm" in name else
                    0.15 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def export_layout(root, cache):
    hf = make_llama(root / "hf")
    heldout = np.random.default_rng(0).integers(0, VOCAB, 600)
    record = run_export(hf, root / cache, heldout, MAX_LEN, CHUNK, "student", log=lambda m: None, cache=cache)
    return hf, root / cache / "model.onnx", heldout, record


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_layout(tmp_path_factory.mktemp("export"), "full")


@pytest.fixture(scope="module")
def exported_gqa(tmp_path_factory):
    return export_layout(tmp_path_factory.mktemp("export-gqa"), "gqa")


@pytest.mark.parametrize("layout", ["exported", "exported_gqa"])
def test_chunked_prefill_through_onnx_equals_full_forward(layout, request):
    hf, path, _, _ = request.getfixturevalue(layout)
    model = load_hf_folder(hf, max_len=MAX_LEN).eval()
    ids = np.random.default_rng(1).integers(0, VOCAB, 37).tolist()  # 4 full chunks and a padded one
    with torch.no_grad():
        full = model(torch.tensor([ids])).numpy()[0]
    lm = OrtLM(path)
    logits, cache = prefill(lm.step, lm.empty_cache(), ids[:30], CHUNK, MAX_LEN)
    tail, _ = decode(lm.step, cache, ids[30:], 30)  # then decode with the cache fed back
    got = np.concatenate([logits, tail])
    assert got.shape == full.shape
    assert np.abs(got - full).max() < 1e-4
    assert (got.argmax(-1) == full.argmax(-1)).all()


def test_reference_scores_segments_in_one_pass_as_its_cached_steps_do(exported):
    hf, _, heldout, _ = exported
    reference = TorchLM(load_hf_folder(hf, max_len=MAX_LEN).eval(), MAX_LEN)

    class Stepped:  # the same model through its static-cache steps: chunked prefill, then decode
        step, empty_cache, max_len = reference.step, reference.empty_cache, reference.max_len

    one_pass, targets = teacher_forced(reference, heldout, CHUNK, MAX_LEN)
    stepped, stepped_targets = teacher_forced(Stepped(), heldout, CHUNK, MAX_LEN)
    assert one_pass.shape == stepped.shape == (16 * (CHUNK + 16 - 1), VOCAB)
    assert (targets == stepped_targets).all()
    assert np.abs(one_pass - stepped).max() < 1e-4


def test_export_record_has_fidelity_floors_and_layers(exported):
    _, path, _, record = exported
    fid = record["fidelity"]
    assert fid["greedy_tokens"] == 64 and fid["greedy_tokens_matching"] == 64
    assert abs(fid["perplexity_change"]) < 1e-4 and fid["perplexity"] > 1
    assert record["floors"]["passed"] and fid["meets_floors"]
    layers = record["precision"]["layers"]
    # 2 layers x 7 projections + the embedding Gather + the LM head
    assert len(layers) == 16 and {layer["precision"] for layer in layers} == {"fp32"}
    assert read_json(path.parent / "verify.json") == fid


def test_fidelity_catches_a_planted_wrong_layer(exported, tmp_path):
    hf, path, heldout, record = exported
    proto = onnx.load(str(path))
    down = next(layer for layer in layer_precisions(path) if "down_proj_1" in layer["node"])
    init = next(i for i in proto.graph.initializer if i.name == down["weight"])
    w = numpy_helper.to_array(init).copy()
    w[:, : w.shape[1] // 8] *= -1  # one layer's weights wrong in a few output channels: a plausible export bug
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))

    reference = TorchLM(load_hf_folder(hf, max_len=MAX_LEN).eval(), MAX_LEN)
    fid = measure_fidelity(reference, OrtLM(bad), heldout, CHUNK)
    verdict = floor_verdict(fid, "fp32")
    assert not verdict["passed"], fid
    assert fid["max_abs_diff"] > 1e-2 and fid["kl_mean"] > 100 * max(record["fidelity"]["kl_mean"], 1e-7)
    assert record["floors"]["passed"]  # the clean export of the same weights passes the same floors


def test_gqa_layout_updates_per_layer_caches_in_place(exported, exported_gqa):
    _, path, _, record = exported_gqa
    assert record["cache"] == "gqa" and record["kv_cache"]["layout"] == "gqa"
    assert record["ops"]["GroupQueryAttention"] == 2 and record["floors"]["passed"]
    assert record["fidelity"]["greedy_tokens_matching"] == 64
    names = {i["name"] for i in record["graphs"][1]["inputs"]}
    assert names == {"input_ids", "position", "past_key_values.0.key", "past_key_values.0.value",
                     "past_key_values.1.key", "past_key_values.1.value"}
    lm = OrtLM(path)
    cache = lm.empty_cache()
    before = [c.data_ptr() for c in cache]
    _, after = lm.step([5, 6, 7], 0, cache)
    assert [c.data_ptr() for c in after] == before  # the same buffers: written in place, not copied out
    assert np.abs(after[0].numpy()[0, :, :3]).sum() > 0 and not after[0].numpy()[0, :, 3:].any()
    # the tied embedding is stored once (the full trace stores the Gather table and the head's transpose)
    assert record["bytes"] < exported[3]["bytes"] - 0.9 * VOCAB * 64 * 4
    # q/k/v packed into one MatMul (GroupQueryAttention splits it), gate/up into one: 4 per layer, and the head
    assert record["ops"]["MatMul"] == 4 * 2 + 1 and record["ops"]["Split"] == 2


def test_gqa_layout_with_qkv_biases_matches_pytorch(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                      tie_word_embeddings=False)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # q/k/v biases large enough that dropping or misplacing one shows in the logits
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn(p.shape) if "norm" in name else 0.15 * torch.randn(p.shape))
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    heldout = np.random.default_rng(1).integers(0, VOCAB, 600)
    record = run_export(tmp_path / "hf", tmp_path / "gqa", heldout, MAX_LEN, CHUNK, "student", log=lambda m: None,
                        cache="gqa")
    assert record["ops"]["Add"] >= 2  # the packed q/k/v bias, once per layer
    assert record["fidelity"]["top1_agreement"] == 1.0 and record["fidelity"]["max_abs_diff"] < 1e-3
    assert record["fidelity"]["greedy_tokens_matching"] == 64


def test_near_ties_are_reported_beside_top1():
    from edgedistil.fidelity import logits_agreement

    ref = np.array([[1.0, 0.95, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.5]])
    got = np.array([[0.9, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.4, 0.5]])  # a near-tie flips, a clear position flips
    a = logits_agreement(ref, got)
    assert a["top1_agreement"] == pytest.approx(1 / 3)
    assert a["near_tie_share"] == pytest.approx(1 / 3)
    assert a["top1_agreement_outside_near_ties"] == pytest.approx(1 / 2)


def test_repetition_penalty_pushes_down_only_the_answers_own_tokens():
    from edgedistil.decoding import greedy, penalized_argmax

    row = np.array([1.0, 3.0, 2.9, -0.5], dtype=np.float32)
    assert penalized_argmax(row, [], 2.0) == 1 and penalized_argmax(row, [1], 1.0) == 1
    assert penalized_argmax(row, [1], 1.2) == 2  # 3.0 / 1.2 = 2.5 < 2.9
    assert penalized_argmax(np.array([-1.0, -1.1], dtype=np.float32), [0], 1.2) == 1  # -1.2 < -1.1
    assert row[1] == 3.0  # the caller's logits are left as they were

    # a model that always prefers token 2, then 3: the penalty moves on after one 2, greedy repeats it
    def step(ids, pos, cache):
        logits = np.tile(np.array([0.0, 0.0, 2.0, 1.8], dtype=np.float32), (len(ids), 1))
        return logits, cache

    assert greedy(step, None, [0, 1], 4, 2, 16) == [2, 2, 2, 2]
    # the prompt's 2s are not penalized
    assert greedy(step, None, [2, 2], 4, 2, 16, repetition_penalty=1.5)[:2] == [2, 3]
    with pytest.raises(EdgeError, match="repetition penalty 0 is not > 0"):
        greedy(step, None, [2, 2], 4, 2, 16, repetition_penalty=0)


@pytest.mark.parametrize("cache", ["full", "gqa"])
def test_a_trimmed_head_exports_as_full_vocabulary_logits_floored_outside_its_rows(tmp_path, cache):
    from edgedistil.model import write_head_rows
    from edgedistil.decoding import HEAD_FLOOR, logit_range

    hf = make_llama(tmp_path / "hf", seed=3)
    kept = list(range(0, VOCAB, 3))
    write_head_rows(hf, kept, VOCAB, "every third id (a test)")
    heldout = np.random.default_rng(3).integers(0, VOCAB, 600)
    record = run_export(hf, tmp_path / cache, heldout, MAX_LEN, CHUNK, "student", log=lambda m: None, cache=cache)
    # checked against the model as shipped: its head cut to the kept rows
    assert record["fidelity"]["top1_agreement"] == 1.0 and record["fidelity"]["max_abs_diff"] < 1e-3
    assert record["fidelity"]["perplexity_positions"] < 600  # next tokens the cut head cannot produce are left out
    lm = OrtLM(tmp_path / cache / "model.onnx")
    ids = heldout[:CHUNK].tolist()
    logits, _ = prefill(lm.step, lm.empty_cache(), ids, CHUNK, MAX_LEN)
    outside = np.ones(VOCAB, bool)
    outside[kept] = False
    assert logits.shape == (CHUNK, VOCAB) and logits[:, outside].max() < HEAD_FLOOR / 2
    whole = load_hf_folder(hf, max_len=MAX_LEN, head="full")
    with torch.no_grad():
        ref = whole(torch.tensor([ids]))[0].numpy()
    assert np.abs(logits[:, kept] - ref[:, kept]).max() < 1e-4
    # a divergence record's logit range reads the ids the head produces, not its floor
    assert logit_range(logits[0]) == pytest.approx(float(np.ptp(ref[0, kept])), abs=1e-3) and logit_range(logits[0]) < 100
    # the head's matrix is the kept rows alone
    heads = [i for i in onnx.load(tmp_path / cache / "model.onnx").graph.initializer if i.dims and VOCAB not in i.dims
             and len(kept) in i.dims and 64 in i.dims]
    assert heads


def test_a_broken_head_rows_file_is_named_in_one_line(tmp_path):
    from edgedistil.model.hf_io import HEAD_ROWS_FILE

    hf = make_llama(tmp_path / "hf", seed=4)
    (hf / HEAD_ROWS_FILE).write_text("{not json")
    with pytest.raises(EdgeError, match="head_rows.json is not a head_rows file") as e:
        load_hf_folder(hf)
    assert "delete it for the whole head" in e.value.fix
    assert load_hf_folder(hf, head="full").head_rows == VOCAB  # the whole head does not read it
    (hf / HEAD_ROWS_FILE).write_text('{"kept_ids": [5, 3, 9]}')
    with pytest.raises(EdgeError, match="sorted, unique token ids"):
        load_hf_folder(hf)
