"""The Hugging Face ONNX layout (`--target onnx`, dist/onnx/) on the tiny recipe: the folder's files and graph I/O,
each file's fidelity against the fp32 PyTorch student, and the real consumers' results recorded by the build:
onnxruntime-genai (og.Model on the folder, one prompt and a batch of two), Optimum (its own venv) and
Transformers.js in Chromium."""

import json
import shutil

import numpy as np
import onnx
import pytest

from conftest import TINY, TINY_BUDGETS, WEB_RUNTIME_ENV, edgedistil


@pytest.fixture(scope="module")
def onnx_run(tiny_run, tmp_path_factory):
    """`build --target onnx` in a copy of the tiny web run: distill, eval and the hf stages web shares are cached."""
    out = tmp_path_factory.mktemp("onnx-run") / "run"
    shutil.copytree(tiny_run[0], out, ignore=shutil.ignore_patterns(".lock"))
    proc = edgedistil("build", "--target", "onnx", "--config", TINY, "--budgets", TINY_BUDGETS, "--out", out,
                      env={"EDGEDISTIL_CACHE": str(tmp_path_factory.mktemp("cache")), **WEB_RUNTIME_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return out, json.loads((out / "dist" / "onnx" / "manifest.json").read_text())


def test_folder_holds_the_layout_with_consumer_graph_io(onnx_run):
    out, manifest = onnx_run
    bundle = out / "dist" / "onnx"
    paths = {f["path"] for f in manifest["files"]}
    assert {"config.json", "generation_config.json", "genai_config.json", "tokenizer.json", "tokenizer_config.json",
            "onnx/model.onnx", "onnx/model_fp16.onnx", "onnx/model_quantized.onnx", "onnx/model_q4.onnx",
            "manifest.json"} - {"manifest.json"} <= paths
    genai = json.loads((bundle / "genai_config.json").read_text())["model"]
    config = json.loads((bundle / "config.json").read_text())
    assert genai["decoder"]["filename"] == "onnx/model.onnx" and genai["type"] == config["model_type"] == "llama"
    assert genai["decoder"]["num_key_value_heads"] == config["num_key_value_heads"]
    for name in ("model.onnx", "model_fp16.onnx", "model_quantized.onnx", "model_q4.onnx"):
        m = onnx.load(str(bundle / "onnx" / name), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)  # weights inline
        io = {i.name: i.type.tensor_type for i in m.graph.input}
        assert set(io) == {"input_ids", "attention_mask"} | {f"past_key_values.{i}.{kv}" for i in range(2)
                                                             for kv in ("key", "value")}
        assert io["input_ids"].elem_type == io["attention_mask"].elem_type == onnx.TensorProto.INT64
        past = [d.dim_value or d.dim_param for d in io["past_key_values.0.key"].shape.dim]
        assert past == ["batch_size", config["num_key_value_heads"], "past_sequence_length", config["head_dim"]]
        assert "GroupQueryAttention" in {n.op_type for n in m.graph.node}


def test_each_file_is_measured_against_pytorch_with_its_floors(onnx_run):
    _, manifest = onnx_run
    files = manifest["hf_onnx"]["files"]
    assert {f["floors"]["precision"] for f in files.values()} == {"fp32", "fp16", "int8", "int4"}
    fp32 = files["model.onnx"]
    assert fp32["floors"]["passed"] and fp32["top1_agreement"] >= 0.999 and fp32["positions_compared"] > 100
    assert manifest["fidelity"]["top1_agreement"] == files["model_quantized.onnx"]["top1_agreement"]


def test_the_teacher_goes_through_the_same_export_and_is_benched_beside_the_student(onnx_run):
    out, manifest = onnx_run
    student, teacher = manifest["bench"], manifest["teacher_bench"]
    assert student["file"] == "onnx/model_quantized.onnx" and teacher["file"] == "export/teacher-hf/model.onnx"
    assert (out / teacher["file"]).is_file() and teacher["model_bytes"] > student["model_bytes"]
    assert student["runtime"] == teacher["runtime"] and teacher["decode_tokens_per_s"] > 0
    assert manifest["speedup_vs_teacher"] == round(student["decode_tokens_per_s"] / teacher["decode_tokens_per_s"], 3)


def test_onnxruntime_genai_generates_pytorch_ids_alone_and_in_a_batch(onnx_run):
    genai = onnx_run[1]["hf_onnx"]["consumers"]["onnxruntime-genai"]
    assert genai["available"] and genai["runtime"].startswith("onnxruntime-genai 0.18")
    assert genai["prompt_tokens"][0] != genai["prompt_tokens"][1]  # two lengths: genai pads the batch
    for result in [genai["single"], *genai["batch"]]:
        assert result["ids_equal"] and len(result["ids"]) >= 8, result
    assert genai["batch"][0]["reference_ids"] != genai["batch"][1]["reference_ids"]


def test_genai_is_timed_on_our_folder_beside_its_own_builders_export(onnx_run):
    """Issue 20: per precision the builder also makes, genai runs our file and its builder's export of the same
    student; the manifest, the report and `check` carry the decode ratio."""
    from edgedistil.report.html import collect, summary_markdown

    out, manifest = onnx_run
    g = manifest["genai_bench"]
    assert set(g["precisions"]) == {"fp32", "q4"} and g["threads"] == 1
    for dtype, p in g["precisions"].items():
        ours, builder = p["ours"], p["builder"]
        assert ours["runtime"].startswith("onnxruntime-genai") and "our folder" in ours["runtime"], ours
        assert "model builder" in builder["runtime"] and ours["decode_tokens_per_s"] > 0, builder
        assert p["decode_ours_over_builder"] == round(ours["decode_tokens_per_s"] / builder["decode_tokens_per_s"], 3)
    assert g["precisions"]["fp32"]["same_first_16_ids"] is True  # the same fp32 weights, greedy
    fp32 = g["precisions"]["fp32"]
    assert f"| onnx/model.onnx / builder fp32 | {fp32['ours']['decode_tokens_per_s']:.1f} |" in summary_markdown(
        collect(out))
    budgets = out.parent / "genai.toml"
    budgets.write_text("[budgets]\ngenai_fp32_vs_builder_min = 1e9\n")
    bad = edgedistil("check", out / "dist" / "onnx", "--budgets", budgets, "--format", "json")
    row = json.loads(bad.stdout)["budgets"][0]
    assert bad.returncode == 1 and row["measured"] == fp32["decode_ours_over_builder"] and row["status"] == "fail"


def test_optimum_loads_the_folder_and_generates_the_same_ids(onnx_run):
    """ORTModelForCausalLM in its own venv (transformers 4.57), every onnx/ file, greedy through its generate()."""
    optimum = onnx_run[1]["hf_onnx"]["consumers"]["optimum"]
    assert optimum["ran"] and "optimum-onnx 0.1.0, transformers 4.57" in optimum["runtime"], optimum
    assert set(optimum["files"]) == {"fp32", "fp16", "q8", "q4"}
    fp32 = optimum["files"]["fp32"]
    assert fp32["reference"] == "fp32 PyTorch student" and fp32["ids_equal"] and len(fp32["ids"]) >= 8, fp32
    for dtype in ("fp16", "q8", "q4"):  # the same CPU kernels as Python onnxruntime on the same file
        assert optimum["files"][dtype]["ids_equal"] and optimum["files"][dtype]["reference"] == \
            "Python onnxruntime, same file", optimum["files"][dtype]
    # the files differ, so equal ids say each file was run, not one of them three times
    assert len({tuple(f["reference_ids"]) for f in optimum["files"].values()}) >= 2


def test_transformersjs_loads_the_folder_in_chromium(onnx_run):
    tjs = onnx_run[1]["hf_onnx"]["consumers"]["transformers.js"]
    assert tjs["ran"] and tjs["runtime"].startswith("Transformers.js 4.3.1"), tjs
    fp32 = tjs["files"]["fp32"]
    assert fp32["ids_equal"] and len(fp32["ids"]) >= 8 and fp32["reference"] == "fp32 PyTorch student"
    assert fp32["pipeline_text_equal_python"] and fp32["pipeline_text"]
    q8 = tjs["files"]["q8"]  # fp32 compute on int8 weights: the same kernels as Python onnxruntime's
    assert q8["ran"] and q8["ids_equal"] and q8["reference"] == "Python onnxruntime, same file"
    fp16 = tjs["files"]["fp16"]  # fp16 weights behind a Cast, fed fp32 as Transformers.js' default cache dtype
    assert fp16["ran"] and fp16["ids_equal"] and fp16["reference"] == "Python onnxruntime, same file"
    q4 = tjs["files"]["q4"]  # MatMulNBits: wasm and native kernels may part at a near-tie; where, is recorded
    assert q4["ran"] and (q4["ids_equal"] or abs(q4["divergence"]["logit_gap"]) < 0.5)


def test_the_report_shows_each_file_and_each_consumer(onnx_run):
    from edgedistil.report.html import collect, summary_markdown

    out, manifest = onnx_run
    md = summary_markdown(collect(out))
    fp16 = manifest["hf_onnx"]["files"]["model_fp16.onnx"]
    assert f"| onnx/model_fp16.onnx | fp16 | {fp16['bytes'] / 1e6:.1f} | {fp16['top1_agreement']:.4f} |" in md
    tjs = manifest["hf_onnx"]["consumers"]["transformers.js"]
    assert f"| transformers.js | {tjs['runtime']} | yes | fp32: equal, fp16: equal, q8: equal" in md


def test_a_consumer_that_stops_without_showing_the_stop_token_matches():
    """onnxruntime-genai stops on end of sequence but leaves the token out; a different token, or going on past the
    reference's stop, is still a mismatch."""
    from edgedistil.convert.hf_consumers import compare

    assert compare([5, 6], [5, 6, 2], {2})["ids_equal"]
    assert compare([5, 6, 2, 2, 2], [5, 6, 2], {2})["ids_equal"]  # a batch row padded after its stop
    assert compare([5, 7], [5, 6, 2], {2}) == {"ids": [5, 7], "reference_ids": [5, 6, 2], "ids_equal": False,
                                               "first_divergence": 1}
    assert compare([5, 6, 9], [5, 6, 2], {2})["first_divergence"] == 2


def test_hf_graph_grows_its_cache_as_transformersjs_feeds_it(onnx_run):
    """The consumers' own calling convention (past of length P in, P + T out), which OrtLM does not use."""
    import onnxruntime as ort

    out, manifest = onnx_run
    s = ort.InferenceSession(str(out / "dist" / "onnx" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    kv, hd = manifest["kv_cache"]["kv_heads"], manifest["kv_cache"]["head_dim"]
    past = {f"past_key_values.{i}.{k}": np.zeros((1, kv, 0, hd), np.float32) for i in range(2) for k in ("key", "value")}
    ids, names = [5, 9, 13, 17], [o.name for o in s.get_outputs()]
    full = s.run(None, {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, 4), np.int64), **past})
    res = dict(zip(names, s.run(None, {"input_ids": np.array([ids[:3]], np.int64),
                                       "attention_mask": np.ones((1, 3), np.int64), **past})))
    grown = {k.replace("present", "past_key_values"): v for k, v in res.items() if k.startswith("present")}
    assert grown["past_key_values.0.key"].shape == (1, kv, 3, hd)
    step = s.run(None, {"input_ids": np.array([[ids[3]]], np.int64), "attention_mask": np.ones((1, 4), np.int64),
                        **grown})
    assert np.abs(step[0][0, -1] - full[0][0, -1]).max() < 1e-4


def test_a_profile_with_an_unknown_dtype_is_refused_in_one_line(tmp_path):
    profile = tmp_path / "onnx.toml"
    from conftest import REPO

    text = (REPO / "targets" / "onnx.toml").read_text().replace('q4 = "int4"', 'q3 = "int4"')
    profile.write_text(text)
    proc = edgedistil("build", "--target", profile, "--config", TINY, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "hf_onnx names dtype 'q3'" in proc.stderr and "fp32, fp16, q8, q4" in proc.stderr
    assert not (tmp_path / "out" / "dist").exists()


def test_transformersjs_chat_prompt_goes_through_the_template_in_the_page(tmp_path):
    """A 2-layer random ChatML model (tiny_teacher(chat=True)) through the layout: the page renders the chat
    prompt with Transformers.js' own template, equal to transformers' apply_chat_template, and generates from it
    the ids PyTorch generates from the same prompt."""
    from edgedistil.convert.hf_consumers import check_transformersjs
    from edgedistil.convert.hf_onnx import write_hf_folder
    from edgedistil.distill.data import load_tokenizer
    from edgedistil.export.onnx import run_export
    from edgedistil.sources import load_corpus, tiny_teacher

    model = tiny_teacher(tmp_path / "chat-model", load_corpus("tiny").text, layers=2, chat=True)
    text = "The sea is wide and deep, and ships sail on it to far lands."
    heldout = np.asarray(load_tokenizer(model).encode(text * 8).ids)
    run_export(model, tmp_path / "export", heldout, 96, 8, "student", log=lambda *_: None, cache="hf")
    folder = tmp_path / "hf"
    folder.mkdir()
    write_hf_folder(folder, model, {"fp32": tmp_path / "export" / "model.onnx"}, 96)
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]  # inline: where TJS reads it
    tjs = check_transformersjs(folder, model, heldout[:8].tolist(), text, 16, log=lambda *_: None)
    assert tjs["ran"] and tjs["chat_template"], tjs
    fp32 = tjs["files"]["fp32"]
    assert fp32["ran"] and fp32["chat_ids_equal_python_template"], fp32
    chat = fp32["chat"]
    assert chat["ids_equal"] and chat["ids"], chat  # from the rendered chat prompt: PyTorch's greedy ids
    assert fp32["chat_reply"]["role"] == "assistant" and fp32["chat_reply_equal_python"], fp32["chat_reply"]
    assert fp32["ids_equal"]


def test_transformersjs_bench_times_each_file_and_generates_its_ids(onnx_run):
    from edgedistil.bench.transformersjs import bench_transformersjs
    from edgedistil.convert.hf_consumers import eos_ids, ort_greedy

    folder = onnx_run[0] / "dist" / "onnx"
    prompt = list(range(5, 21))
    got = bench_transformersjs(folder, prompt, new_tokens=6, repeats=1, log=lambda *_: None)
    assert got["runtime"].startswith("Transformers.js 4.3.1") and {"fp32", "q8"} <= set(got["files"])
    eos = eos_ids(folder)
    for dtype, r in got["files"].items():
        assert r["decode_tokens_per_s"] > 0 and r["ttft_ms"] > 0 and r["renderer_peak_rss_mb"] > 50, (dtype, r)
        assert len(r["ids"]) == 6  # min_new_tokens: every run times the same number of tokens
        if dtype in ("fp32", "q8"):  # the same kernels as Python onnxruntime's on these files
            ref = ort_greedy(folder / r["file"], prompt, 6)
            n = next((i for i, t in enumerate(ref) if t in eos), len(ref))  # the bench never stops at EOS
            assert r["ids"][:n] == ref[:n], (dtype, r["ids"], ref)
