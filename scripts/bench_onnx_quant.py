"""Which int8 and int4 schemes meet their floors on ONNX Runtime, and what each costs in speed and memory.

    python scripts/bench_onnx_quant.py --run RUN     # RUN: a build folder with distill/ and export/student/

Each row quantizes RUN's fp32 student export (export/student/model.onnx) with edgedistil's own quantize methods
(edgedistil.quantize.onnx.quantize_file; the gqa rows quantize the in-place layout built from RUN's student):
MatMulNBits weights rounded to nearest or with GPTQ (the stage's default), with or without smoothing, at
accuracy_level 4 (int8 activations, the stage's) or 1 (fp32 compute), int4 with some layers at 8 bits, some
layers kept float (`keep_float`). It measures each row's fidelity against the fp32 PyTorch student like the
quantize stage does (16 held-out segments, 64 greedy tokens), then times decode (1 thread, a 64-token prefill,
then 40 steps, the first 8 warm-up) and reads the peak RSS in a fresh process. The rows run one after the other
in one run, so their speeds compare. Writes docs/results/onnx_quant_schemes.json.

    python scripts/bench_onnx_quant.py --run RUN --int4-eight-bit   # RUN: a finished `build --target onnx`

quantizes RUN's Hugging Face layout export (export/student-hf/model.onnx, what dist/onnx's model_q4.onnx comes
from) with the quantize stage itself (run_quantize, int4, GPTQ), once per set of layers kept at 8 bits: the stage's
(none: every MatMul 4-bit, the tied embedding looked up in the head's codes), the LM head, down_proj and qkv_proj
alone, and the LM head with down_proj (the stage's set until 2026-12-07). Fidelity only, against the fp32
PyTorch student as the stage measures it; no timing (scripts/bench_genai.py --q4 times such files in genai). One
more row: onnxruntime-genai's model builder's int4 export of the same student (`-p int4 -e cpu`: every MatMul and
the LM head 4-bit, measured the same way), so the stage's choice can be read against the file genai's own tooling
makes.
Writes docs/results/onnx_int4_eight_bit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "onnx_quant_schemes.json"))
    ap.add_argument("--int4-eight-bit", action="store_true", help="int4's 8-bit layer sets on the hf export (above)")
    args = ap.parse_args()
    if args.int4_eight_bit:
        return int4_eight_bit(Path(args.run), Path(args.json).with_name("onnx_int4_eight_bit.json")
                              if args.json.endswith("onnx_quant_schemes.json") else Path(args.json))

    import logging

    import onnx
    import torch

    from edgedistil.build import Run
    from edgedistil.export.gqa import build_gqa_graph
    from edgedistil.config import load_recipe
    from edgedistil.fidelity import FLOORS, measure_fidelity
    from edgedistil.model import load_hf_folder
    from edgedistil.quantize.onnx import quantize_file
    from edgedistil.runtimes.ort import OrtLM
    from edgedistil.runtimes.torch_step import TorchLM

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    run = Path(args.run)
    src = run / "export" / "student" / "model.onnx"
    if not src.is_file():
        sys.exit(f"{src} does not exist: run `edgedistil export --out {run}` first")
    heldout = Run(out=run, recipe=load_recipe(None)).heldout_ids()
    reference = TorchLM(load_hf_folder(run / "distill" / "student", max_len=256).eval(), 256)
    head_down = ["lm_head", "down_proj"]
    # name -> (graph, method, keep_float, accuracy_level, rounding, smooth_alpha, int4's 8-bit layers);
    # None = the method's default
    emb, all4 = ["embed_tokens"], ()
    schemes = {
        "fp32 export": None,
        "int8: dynamic, per channel (MatMulInteger)": ("full", "int8", [], 4, "nearest", None, None),
        "int8: dynamic, lm_head and down_proj fp32": ("full", "int8", head_down, 4, "nearest", None, None),
        "int8_wo: MatMulNBits 8-bit, nearest": ("full", "int8_wo", [], 4, "nearest", None, None),
        "int8_wo: GPTQ": ("full", "int8_wo", [], 4, "gptq", 0, None),
        "int8_wo: GPTQ + smoothing (the stage's)": ("full", "int8_wo", [], 4, "gptq", None, None),
        "int8_wo: GPTQ + smoothing, gqa layout": ("gqa", "int8_wo", [], 4, "gptq", None, None),
        "int8_wo: GPTQ, fp32 compute (accuracy_level 1)": ("full", "int8_wo", [], 1, "gptq", 0, None),
        "int4: every MatMul 4-bit, nearest": ("full", "int4", emb, 4, "nearest", None, all4),
        "int4: every MatMul 4-bit, GPTQ": ("full", "int4", emb, 4, "gptq", None, all4),
        "int4: every MatMul 4-bit, GPTQ + smoothing": ("full", "int4", emb, 4, "gptq", 0.5, all4),
        "int4: every MatMul 4-bit, GPTQ, fp32 compute (accuracy_level 1)": ("full", "int4", emb, 1, "gptq", None, all4),
        "int4: GPTQ, lm_head 8-bit": ("full", "int4", emb, 4, "gptq", None, ("lm_head",)),
        "int4: GPTQ, lm_head and down_proj 8-bit (the stage's)": ("full", "int4", emb, 4, "gptq", None, None),
        "int4: GPTQ, lm_head and down_proj 8-bit, gqa layout": ("gqa", "int4", [], 4, "gptq", None, None),
        "fp16 weights (compute fp32)": ("full", "fp16", [], 4, "nearest", None, None),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gqa = Path(tmp) / "gqa" / "model.onnx"  # the in-place layout, from the same student
        gqa.parent.mkdir()
        onnx.save(build_gqa_graph(load_hf_folder(run / "distill" / "student", max_len=256).eval(), 256), str(gqa))
        work = Path(tmp) / "q"
        work.mkdir()
        for name, how in schemes.items():
            path = work / "q.onnx"
            for old in work.iterdir():
                old.unlink()
            if how is None:
                shutil.copy(src, path)
            else:
                graph, method, keep, level, rounding, alpha, eight_bit = how
                quantize_file(gqa if graph == "gqa" else src, path, method, keep, 32, heldout, 64,
                              accuracy_level=level, rounding=rounding, smooth_alpha=alpha, eight_bit=eight_bit)
            f = measure_fidelity(reference, OrtLM(path), heldout, 64, segments=16, greedy_tokens=64)
            timed = subprocess.run([sys.executable, "-m", "edgedistil.bench.decode_probe", "ort", str(path)],
                                   capture_output=True, text=True, cwd=REPO)
            if timed.returncode != 0:
                sys.exit(f"{name}: {timed.stderr[-2000:]}")
            decode, peak_mb = (float(x) for x in timed.stdout.split()[-2:])
            row = {"scheme": name, "mb": round(sum(p.stat().st_size for p in work.iterdir()) / 1e6, 1),
                   "top1_agreement": round(f["top1_agreement"], 4), "kl_mean": f["kl_mean"],
                   "greedy_tokens_matching": f["greedy_tokens_matching"],
                   "top1_agreement_outside_near_ties": round(f["top1_agreement_outside_near_ties"], 4),
                   "near_tie_share": round(f["near_tie_share"], 4), "positions": f["positions_compared"],
                   "decode_tokens_per_s_1_thread": round(decode, 1), "peak_rss_mb": round(peak_mb)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"command": "python scripts/bench_onnx_quant.py --run RUN",
           "machine": {"cpus": os.cpu_count(), "loadavg_1m_after": os.getloadavg()[0]},
           "floors": {p: FLOORS[p] for p in ("int8", "int4", "fp16")}, "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


def int4_eight_bit(run: Path, dest: Path) -> None:
    from edgedistil.build import Run
    from edgedistil.config import load_recipe
    from edgedistil.fidelity import FLOORS
    from edgedistil.quantize.onnx import INT4_EIGHT_BIT, run_quantize

    src = run / "export" / "student-hf" / "model.onnx"
    if not src.is_file():
        sys.exit(f"{src} does not exist: run `edgedistil build --target onnx --out {run}` first")
    recipe = load_recipe(None)
    heldout = Run(out=run, recipe=recipe).heldout_ids()
    rows = []
    # the stage's set first, then the three layers the sensitivity ranking puts first, alone and the head with
    # down_proj (the stage's set until 2026-12-07)
    sets = [INT4_EIGHT_BIT, ("lm_head",), ("down_proj",), ("qkv_proj",), ("lm_head", "down_proj")]
    for eight_bit in dict.fromkeys(tuple(s) for s in sets):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_quantize(src, run / "distill" / "student", Path(tmp) / "q", heldout, recipe.export.prefill_len,
                             "int4", log=lambda m: None, eight_bit=eight_bit)
        rows.append({"eight_bit": list(eight_bit), "bytes": r["bytes"], **int4_fidelity(r["fidelity"])})
        print(json.dumps(rows[-1]), flush=True)
    rows.append(builder_int4_row(run, heldout, recipe))
    print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python scripts/bench_onnx_quant.py --run RUN --int4-eight-bit", "source": str(src),
           "floors": FLOORS["int4"], "reference": "fp32 PyTorch student, the quantize stage's held-out segments",
           "rows": rows}
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


def int4_fidelity(f: dict) -> dict:
    """A row's fidelity figures and whether they meet the int4 floors."""
    from edgedistil.fidelity import floor_verdict

    return {"top1_agreement": round(f["top1_agreement"], 4), "kl_mean": round(f["kl_mean"], 4),
            "greedy_tokens_matching": f["greedy_tokens_matching"],
            "meets_int4_floors": floor_verdict(f, "int4")["passed"]}


def builder_int4_row(run: Path, heldout, recipe) -> dict:
    """onnxruntime-genai's model builder's int4 export of RUN's student, measured as the quantize stage measures
    ours. Its graph has our hf layout's inputs; OrtLM reads the cache length from edgedistil.max_len and the head
    size from the cache inputs' shape, so a copy of the file gets that metadata entry (its RoPE tables serve far
    longer) and a fixed last dimension where the builder names it symbolically."""
    import onnx

    from edgedistil.bench.peers import builder_export
    from edgedistil.fidelity import measure_fidelity
    from edgedistil.model import load_hf_folder
    from edgedistil.runtimes.ort import OrtLM
    from edgedistil.runtimes.torch_step import TorchLM
    from edgedistil.sources.cache import cache_dir

    max_len = recipe.export.max_len
    work = cache_dir() / "bench-genai"  # shared with scripts/bench_genai.py, which times the same export
    work.mkdir(parents=True, exist_ok=True)
    out = Path(builder_export(str(run / "distill" / "student"), str(work), "int4")[0])
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(out / "model.onnx"))
        onnx.helper.set_model_props(model, {"edgedistil.max_len": str(max_len)})
        config = json.loads((run / "distill" / "student" / "config.json").read_text())
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        for value in (*model.graph.input, *model.graph.output):
            if value.name.startswith(("past_key_values.", "present.")):
                value.type.tensor_type.shape.dim[3].dim_value = head_dim
        copy = Path(tmp) / "builder-int4.onnx"
        onnx.save(model, str(copy))
        nbytes = sum(p.stat().st_size for p in out.glob("model.onnx*"))
        f = measure_fidelity(TorchLM(load_hf_folder(run / "distill" / "student", max_len=max_len), max_len),
                             OrtLM(copy), heldout, recipe.export.prefill_len)
    return {"eight_bit": [], "file": "onnxruntime-genai model builder, -p int4 -e cpu (every MatMul and the LM head "
                                    "4-bit, block 32, accuracy_level 4)",
            "bytes": nbytes, **int4_fidelity(f)}


if __name__ == "__main__":
    main()
