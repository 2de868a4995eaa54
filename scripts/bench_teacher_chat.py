"""How fast the teacher writes teacher-chat answers: fp32 against bf16 weights, at several batch sizes, side by side
in one process (greedy, the same chat prompts, every row forced to the same length so each setting decodes the same
number of tokens).

    python scripts/bench_teacher_chat.py                          # the default recipe's teacher
    python scripts/bench_teacher_chat.py --batches 32,64 --new-tokens 32

Decoding a 135M model at these batch sizes is bound by reading the weights, so bf16 (half the bytes, native on CPUs
with avx512_bf16 or AMX) is what moves it; the batch size spreads each read over more rows. Writes
docs/results/teacher_chat_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from edgedistil.records import machine

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="recipe TOML (default: the built-in default)")
    ap.add_argument("--batches", default="32,64,128", help="batch sizes, comma-separated")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens each row decodes")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "teacher_chat_speed.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgedistil.build import Run
    from edgedistil.config import load_recipe
    from edgedistil.distill.train import cpu_has_bf16

    load_before = os.getloadavg()
    run = Run(out=Path("/tmp/edgedistil-bench-teacher-chat"), recipe=load_recipe(args.config), log=print)
    teacher = run.teacher_dir()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    tokenizer.padding_side = "left"
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    batches = [int(b) for b in args.batches.split(",")]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Tell me one fact about topic {i}."}],
                                             tokenize=False, add_generation_prompt=True) for i in range(max(batches))]
    model = AutoModelForCausalLM.from_pretrained(teacher, use_safetensors=True).eval()
    rows = []
    for dtype in ("float32", "bfloat16"):
        model = model.to(getattr(torch, dtype))
        for b in batches:
            enc = tokenizer(prompts[:b], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                model.generate(**enc, do_sample=False, max_new_tokens=2, pad_token_id=eot)  # warm
                t0 = time.perf_counter()
                model.generate(**enc, do_sample=False, max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, pad_token_id=eot)
                seconds = time.perf_counter() - t0
            rows.append({"dtype": dtype, "batch": b, "seconds": round(seconds, 2),
                         "tokens_per_s": round(b * args.new_tokens / seconds, 1)})
            print(f"{dtype:>9} batch {b:>4}: {rows[-1]['tokens_per_s']:7.1f} tok/s")
    base = next(r for r in rows if r["dtype"] == "float32" and r["batch"] == 32) if 32 in batches else rows[0]
    for r in rows:
        r["ratio_to_fp32_batch32" if 32 in batches else "ratio_to_first"] = round(
            r["tokens_per_s"] / base["tokens_per_s"], 2)
    result = {
        "command": "python scripts/bench_teacher_chat.py" + (f" --config {args.config}" if args.config else "")
                   + f" --batches {args.batches} --new-tokens {args.new_tokens}",
        "teacher": str(teacher), "new_tokens": args.new_tokens, "rows": rows,
        "machine": machine(load_before, cpu_has_bf16=cpu_has_bf16(), torch=torch.__version__,
                           threads=torch.get_num_threads()),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
