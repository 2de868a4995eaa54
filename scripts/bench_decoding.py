"""The eval's chat answers under a repetition penalty, beside greedy: does the decoding fix the loops?

    python scripts/bench_decoding.py --student RUN/distill/student      # -> docs/results/decoding_repetition.json
    python scripts/bench_decoding.py --student RUN/distill/student --penalties 1.0 --no-repeat-ngrams 3,4 \
        --json docs/results/decoding_no_repeat_ngram.json

The eval's behaviour section (edgedistil/eval/behaviour.py) decodes greedily, as issue 18 measures. A consumer's
generation config may add transformers' repetition penalty (CTRL's: a token already in the context has its logit
divided by the penalty when positive, multiplied when negative), which transformers, Transformers.js and
onnxruntime-genai all apply over the whole context, the prompt included. For the student and its teacher, at each
penalty: the share of degenerate answers, the share that end their turn, the mean length, and ROUGE-L of the
student's answers against the teacher's at the same penalty and against the teacher's greedy ones.
`--no-repeat-ngrams` adds rows for transformers' no_repeat_ngram_size, over each of `--scopes` (over the whole
context it is a key Transformers.js and onnxruntime-genai configs have too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgedistil.errors import write_json  # noqa: E402
from edgedistil.eval import behaviour  # noqa: E402
from edgedistil.sources.cache import cache_dir  # noqa: E402


def mean_rouge(a: list[dict], b: list[dict]) -> float:
    return round(sum(behaviour.rouge_l(x["text"], y["text"]) for x, y in zip(a, b)) / len(a), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, required=True, help="student HF folder (RUN/distill/student)")
    ap.add_argument("--teacher", type=Path, default=cache_dir() / "teachers" / "smollm2-135m-instruct")
    ap.add_argument("--penalties", default="1.0,1.1,1.2,1.3")
    ap.add_argument("--scopes", default="context,answer",
                    help="where the penalty looks: the whole context (as the runtimes apply it), the answer only")
    ap.add_argument("--no-repeat-ngrams", default="", help="comma-separated n for no_repeat_ngram_size rows")
    ap.add_argument("--new-tokens", type=int, default=behaviour.NEW_TOKENS)
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "decoding_repetition.json")
    args = ap.parse_args()
    for d in (args.student, args.teacher):
        if not (d / "config.json").is_file():
            raise SystemExit(f"no HF model folder at {d}: pass --student RUN/distill/student (and --teacher DIR)")
    t0 = time.perf_counter()
    prompts = behaviour.chat_prompts()
    penalties = [float(x) for x in args.penalties.split(",")]
    # (penalty, label, no_repeat_ngram_size, scope): no_repeat_N looks at the whole context, as generation configs
    # apply it; no_repeat_N_answer at the answer alone
    settings = [(1.0, "none", 0, "context")] + [(p, sc, 0, sc) for sc in args.scopes.split(",") for p in penalties
                                                if p != 1.0]
    settings += [(1.0, f"no_repeat_{n}" + ("_answer" if sc == "answer" else ""), int(n), sc)
                 for sc in args.scopes.split(",") for n in args.no_repeat_ngrams.split(",") if n]
    gen = {(role, p, label): behaviour.generate_answers(d, prompts, args.new_tokens, repetition_penalty=p,
                                                        penalty_scope=sc, no_repeat_ngram=n)["answers"]
           for role, d in (("student", args.student), ("teacher", args.teacher)) for p, label, n, sc in settings}
    rows = []
    for p, sc, n, _ in settings:
        s, t = gen["student", p, sc], gen["teacher", p, sc]
        rows.append({"repetition_penalty": p, "scope": sc, "no_repeat_ngram_size": n, "student": behaviour.summarize(s),
                     "teacher": behaviour.summarize(t), "rouge_l_student_vs_teacher": mean_rouge(s, t),
                     "rouge_l_student_vs_greedy_teacher": mean_rouge(s, gen["teacher", 1.0, "none"])})
        r = rows[-1]
        print(f"penalty {p} ({sc}): degenerate student {r['student']['degenerate']:.3f} teacher "
              f"{r['teacher']['degenerate']:.3f}; ends its turn student {r['student']['ends_with_end_of_turn']:.3f} "
              f"teacher {r['teacher']['ends_with_end_of_turn']:.3f}; ROUGE-L {r['rouge_l_student_vs_teacher']}")
    write_json(args.json, {
        "command": "python scripts/bench_decoding.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "student": str(args.student), "teacher": str(args.teacher), "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "decoding": "greedy, with transformers' repetition penalty or its no_repeat_ngram_size, over the whole "
                    "context or the answer only",
        "rows": rows,
        "answers": [{"prompt": q, **{f"{role} {p} {sc}": gen[role, p, sc][i]["text"]
                                     for role in ("student", "teacher") for p, sc, _, _ in settings}}
                    for i, q in enumerate(prompts)],
        "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
