"""Does the teacher endorse a student's loops? For each degenerate chat answer in an eval.json, the teacher reads the
prompt (through its chat template) and the student's answer, and we count how often the teacher's own greedy
token is the student's next token, in the answer's first half (before or as the loop starts) and in its second
half (inside the loop).

    .venv/bin/python scripts/bench_loop_states.py RUN/eval/eval.json --json docs/results/loop_states_NAME.json

If the teacher agrees more inside the loop than before it, it scores a looping prefix as its own likely text,
and on-policy distillation (the teacher scoring the student's own samples) rewards the loop rather than breaking
it (docs/quality.md, "On-policy distillation").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgedistil.errors import EdgeError, read_json, write_json  # noqa: E402
from edgedistil.sources.cache import cache_dir  # noqa: E402

TEACHER = cache_dir() / "teachers" / "smollm2-135m-instruct"


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgedistil.eval.behaviour import degenerate

    ap = argparse.ArgumentParser()
    ap.add_argument("eval_json", type=Path, help="an eval.json with behaviour answers (edgedistil eval)")
    ap.add_argument("--teacher", type=Path, default=TEACHER)
    ap.add_argument("--json", type=Path, required=True, help="where the figures go")
    args = ap.parse_args()
    if not args.eval_json.is_file():
        raise EdgeError(f"{args.eval_json} does not exist", "pass RUN/eval/eval.json from `edgedistil eval RUN`")
    answers = read_json(args.eval_json).get("behaviour", {}).get("answers") or []
    rows = [a for a in answers if degenerate(a["student"])]
    if not rows:
        raise EdgeError(f"{args.eval_json} holds no degenerate student answers", "pass the eval of a looping student")
    tok = AutoTokenizer.from_pretrained(args.teacher, local_files_only=True)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, use_safetensors=True).float().eval()
    halves = {"first_half": [0, 0, 0.0], "second_half": [0, 0, 0.0]}  # agreements, tokens, probability sum
    with torch.no_grad():
        for a in rows:
            prompt = tok.apply_chat_template([{"role": "user", "content": a["prompt"]}], tokenize=False,
                                             add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False).input_ids
            a_ids = tok(a["student"], add_special_tokens=False).input_ids
            logp = teacher(torch.tensor([p_ids + a_ids])).logits[0, len(p_ids) - 1:-1].log_softmax(-1)
            target = torch.tensor(a_ids)
            agree = logp.argmax(-1) == target
            prob = logp.gather(1, target[:, None]).exp()[:, 0]
            mid = len(a_ids) // 2
            for name, part in (("first_half", slice(0, mid)), ("second_half", slice(mid, None))):
                h = halves[name]
                h[0] += int(agree[part].sum())
                h[1] += int(agree[part].numel())
                h[2] += float(prob[part].sum())
    result = {"command": "python scripts/bench_loop_states.py " + " ".join(sys.argv[1:]),
              "eval": str(args.eval_json), "teacher": str(args.teacher), "degenerate_answers": len(rows),
              "answers": len(answers),
              **{name: {"tokens": n, "teacher_top1_is_students_token": round(agree / n, 4),
                        "teacher_mean_probability_of_it": round(p / n, 4)}
                 for name, (agree, n, p) in halves.items()}}
    write_json(args.json, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    try:
        main()
    except EdgeError as e:
        raise SystemExit(f"error: {e.line()}") from None
