"""Peers at equal budget (issue 18): edgedistil's distill stage beside TRL's GKDTrainer and torchtune's KD recipe,
from the same student init, on the same training windows in the same order, with the same steps, batch, learning
rate schedule and optimizer; every resulting student evaluated the same way by edgedistil's own code.

    .venv/bin/python scripts/bench_peers.py                              # the embedded default, all peers
    .venv/bin/python scripts/bench_peers.py --steps 5 --eval-tokens 256 --json /tmp/peers.json   # a smoke run
    .venv/bin/python scripts/bench_peers.py --peers trl --run-eval       # + benchmarks and chat (edgedistil eval)
    .venv/bin/python scripts/bench_peers.py --run-eval --work W --resume # after a crash: reuse the runs finished in W

What it does:
1. Builds the recipe's initial student exactly as the distill stage does (make_student: the measured layer pick)
   and saves it, untrained, as an HF folder (safetensors). Every run trains from that folder.
2. Draws the training windows the distill stage draws (seeded, steps x batch windows of seq_len + 1 tokens of the
   training split) and saves them in training order as one int32 .npy; checks they equal the blocks of the
   teacher top-k cache the recipe trains from.
3. Trains: `edgedistil` (the recipe as it is: top-k cache), `edgedistil_live` (teacher run live, full vocabulary:
   the peers' loss), `trl` (trl.experimental.gkd.GKDTrainer, lmbda 0, beta 0 = forward KL), `torchtune` (its
   knowledge_distillation_single_device recipe with a full-parameter student) and optionally `torchtune_lora` (the
   recipe as shipped, which trains LoRA adapters). Each peer runs scripts/peers/train_peer.py in its own venv,
   <edgedistil cache>/peers-<name>-venv, made here with torch 2.13.0 installed first and pinned by constraints.
4. Evaluates every student (and the untrained init) with edgedistil.distill.evaluate on the recipe's held-out
   split and on [data] heldout_corpus (never trained on): perplexity, top-1 agreement, KL(teacher || student);
   with --run-eval also edgedistil.eval.run_eval (benchmarks, chat behaviour).
5. Writes docs/results/peers_<recipe>.json (or --json): per run the training-loop tokens/s (steps x batch x
   seq_len predicted tokens over the loop's wall time), end-to-end seconds, quality, and what its loss/setup is.

A peer that fails is recorded with its one-line reason; the other runs go on. The goal (issue 18): edgedistil's
quality equal or better than each peer's (held-out perplexity, in-domain and on the other corpus) at 1.5x their
training tokens/s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgedistil.records import machine

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DRIVER = REPO / "scripts" / "peers" / "train_peer.py"
PEER_VENVS = {  # venv name -> packages pinned (torch comes first, then these under the constraint)
    "trl": ["trl==1.16.0", "transformers==5.23.0"],
    "torchtune": ["torchtune==0.6.1", "torchao==0.11.0"],  # torchao 0.12+ dropped the nf4tensor torchtune imports
}
PEERS = ("trl", "torchtune", "torchtune_lora")  # all run by default
SPEED_GOAL = 1.5
WALL_FILE = "bench_wall.json"  # in each run's folder once it finished: its end-to-end seconds, for --resume


def peer_venv(name: str, log=print) -> Path:
    """<venv root>/peers-<name>-venv with torch pinned first, then the peer's pins (made once)."""
    from edgedistil.runtimes.venv import pinned_venv

    return pinned_venv(f"peers-{name}-venv", PEER_VENVS[name], log)


def one_line(text: str) -> str:
    """The last informative line of a traceback or log, for the JSON."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def windows_for(train_ids, starts, recipe):
    """The windows the distill stage trains on, in order: steps draws of batch_size blocks of seq_len + 1 tokens from
    one generator seeded with [distill] seed (as sample_blocks and the teacher cache draw them)."""
    import torch

    from edgedistil.distill.data import sample_blocks

    d = recipe.distill
    gen = torch.Generator().manual_seed(d.seed)
    return torch.cat([sample_blocks(train_ids, d.batch_size, recipe.data.seq_len + 1, gen, starts)
                      for _ in range(d.steps)])


def peer_entry(rec: dict, out: Path, wall: float, tokens: int, steps: int) -> dict:
    """A peer's row of the JSON from its peer_record.json and the wall time of its process."""
    if rec["steps_run"] != steps:
        return {"failed": f"ran {rec['steps_run']} steps, not {steps}"}
    curve = rec.pop("curve")
    return {
        "what": rec.pop("trainer"), "student_dir": str(out / "student"),
        "train_loop_seconds": round(rec["train_loop_seconds"], 2),
        "train_tokens_per_s": round(tokens / rec["train_loop_seconds"], 1),
        "end_to_end_seconds": round(wall, 1),
        "end_to_end_scope": "the peer's process: python start, imports, loading student and teacher, train, save",
        "final_loss": curve[-1].get("loss") if curve else None,
        "curve_first_last": [curve[0], curve[-1]] if curve else None,
        **{k: v for k, v in rec.items() if k not in ("train_loop_seconds",)},
    }


def quality_of(student_dir: Path, teacher, windows, other_windows) -> dict:
    from edgedistil.distill.evaluate import compare_on_heldout
    from edgedistil.model import load_hf_folder

    student = load_hf_folder(student_dir).eval()
    q = {"in_domain": compare_on_heldout(student, teacher, windows)}
    if other_windows is not None:
        q["heldout_corpus"] = compare_on_heldout(student, teacher, other_windows)
    return q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="recipe TOML (default: the built-in default)")
    ap.add_argument("--steps", type=int, default=None, help="training steps for every run (default: the recipe's)")
    ap.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens per corpus (default: recipe's)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
    ap.add_argument("--no-live", action="store_true", help="skip the edgedistil run with the live teacher")
    ap.add_argument("--run-eval", action="store_true", help="also run edgedistil eval (fast benchmarks, chat)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every run (default: all cores)")
    ap.add_argument("--work", type=Path, default=None, help="keep inits, windows and students here")
    ap.add_argument("--resume", action="store_true",
                    help="with --work: reuse every run that finished there before (its student, record and timing) "
                         "instead of training it again")
    ap.add_argument("--json", default=None, help="output path")
    args = ap.parse_args()
    if args.resume and args.work is None:
        raise SystemExit("--resume needs --work, the folder an earlier run kept its students in")
    peers = [p for p in args.peers.split(",") if p]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise SystemExit(f"unknown peer(s) {bad}; choose from {PEERS}")

    import numpy as np
    import torch

    from edgedistil.build import Run, recipe_with
    from edgedistil.config import load_recipe
    from edgedistil.distill.data import load_tokenizer, tokenize, tokenize_documents
    from edgedistil.distill.evaluate import eval_windows
    from edgedistil.distill.train import lr_at, make_student
    from edgedistil.errors import write_json
    from edgedistil.model import load_hf_folder, save_hf_folder
    from edgedistil.sources import load_corpus, split_corpus

    recipe = load_recipe(args.config)
    if args.steps:
        recipe = recipe_with(recipe, distill={"steps": args.steps})
    if args.eval_tokens:
        recipe = recipe_with(recipe, distill={"eval_tokens": args.eval_tokens})
    recipe = recipe_with(recipe, distill={"preflight_export": False, "device": "cpu"})
    d, data = recipe.distill, recipe.data
    name = Path(args.config).stem if args.config else "default"
    dest = Path(args.json) if args.json else REPO / "docs" / "results" / f"peers_{name}.json"
    threads = args.threads or os.cpu_count() or 1
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    load_before = os.getloadavg()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="edgedistil-bench-peers-") if args.work is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)

    run = Run(out=work / "run", recipe=recipe, log=log)
    teacher_dir, corpus = run.teacher_dir(), run.corpus()
    tok = load_tokenizer(teacher_dir)
    teacher = load_hf_folder(teacher_dir).eval().requires_grad_(False)
    train_docs, heldout_text = split_corpus(corpus, data.heldout_fraction)
    train_text = "\n".join(train_docs)

    # 1. the initial student, as run_distill makes it (same seed, same calibration text), saved untrained
    torch.manual_seed(d.seed)
    student, _, design = make_student(teacher, teacher_dir, recipe, tokenize(tok, train_text[:200_000]), log)
    init_dir = work / "init"
    save_hf_folder(student.float(), init_dir, tokenizer_from=teacher_dir)
    del student

    # 2. the training windows, in order
    train_ids, doc_starts = tokenize_documents(tok, train_docs)
    windows = windows_for(train_ids, doc_starts if data.windows == "documents" else None, recipe)
    windows_path = work / "windows.npy"
    np.save(windows_path, windows.numpy().astype(np.int32))
    lrs = [lr_at(s, d.steps, d.warmup_steps, d.lr) for s in range(d.steps)]

    heldout = eval_windows(tokenize(tok, heldout_text), data.seq_len, d.eval_tokens)
    other, other_name = None, None
    if data.heldout_corpus:
        oc = load_corpus(data.heldout_corpus, log=log)
        if oc.text != corpus.text:
            other = eval_windows(tokenize(tok, oc.text[:200_000]), data.seq_len, d.eval_tokens)
            other_name = oc.name

    runs: dict[str, dict] = {}
    tokens = d.steps * d.batch_size * data.seq_len  # predicted tokens the loop trains on, the same for every run

    # 3a. ours, from the same init folder: the recipe as it is, and with the teacher live (the peers' full-vocab KL)
    from edgedistil.distill.train import run_distill

    from edgedistil.distill.train import pick_device

    # the recipe trains under bf16 autocast where the CPU multiplies bf16 natively; the peers train in fp32, so an
    # fp32 run of the recipe is beside it whenever the two differ
    recipe_bf16 = pick_device("cpu", d.precision)[1] is not None
    ours = ([("edgedistil", {})] + ([("edgedistil_fp32", {"precision": "fp32"})] if recipe_bf16 else [])
            + ([] if args.no_live else [("edgedistil_live", {"teacher_topk": 0})]))
    windows_match_cache = None
    for label, settings in ours:
        r = recipe_with(recipe, distill=settings, student={"source": str(init_dir)})
        done = work / label / WALL_FILE
        if args.resume and done.is_file() and (work / label / "record.json").is_file():
            log(f"[{label}] reusing the finished run in {work / label}")
            record = json.loads((work / label / "record.json").read_text())
            wall = json.loads(done.read_text())["end_to_end_seconds"]
        else:
            t0 = time.perf_counter()
            try:
                record = run_distill(teacher_dir, corpus, r, work / label, log=log)
            except Exception as e:  # noqa: BLE001 - recorded, the other runs go on
                runs[label] = {"failed": f"{type(e).__name__}: {one_line(str(e))}"}
                continue
            wall = time.perf_counter() - t0
            done.write_text(json.dumps({"end_to_end_seconds": wall}))
        cache = record.get("teacher_cache")
        if cache:
            from safetensors.torch import load_file

            from edgedistil.distill.teacher_cache import FILE, drawn_blocks

            blocks = drawn_blocks(load_file(str(Path(cache["folder"]) / FILE)))
            windows_match_cache = bool(torch.equal(blocks.long(), windows))
        bf16 = pick_device("cpu", r.distill.precision)[1] is not None
        runs[label] = {
            "what": ("edgedistil distill stage, the recipe" + (" at fp32" if settings else " as it is")
                     + f": forward KL on the teacher's top-{d.teacher_topk} logits (cached once; the teacher is not "
                     f"run while training), alpha {d.alpha} with CE, T {d.temperature}")
                    if r.distill.teacher_topk else
                    (f"edgedistil distill stage with the teacher run live: full-vocabulary forward KL, alpha "
                     f"{d.alpha} with CE, T {d.temperature}"),
            "precision": "bf16 autocast (fp32 weights and optimizer)" if bf16 else "fp32",
            "student_dir": str(work / label / "student"),
            "train_loop_seconds": record["train_seconds"],
            "train_tokens_per_s": round(tokens / record["train_seconds"], 1),
            "end_to_end_seconds": round(wall, 1),
            "end_to_end_scope": "run_distill: load, tokenize, train, held-out eval with the teacher, save"
                                + ("; includes building the top-k cache when it was missing" if cache else ""),
            "teacher_cache": {"folder": cache["folder"], "blocks": cache["blocks"]} if cache else None,
            "final_loss": record["final_loss"],
        }

    # 3b. the peers, each in its venv, each from the init folder on the windows file
    job = {"student_init": str(init_dir), "teacher": str(teacher_dir), "windows": str(windows_path),
           "steps": d.steps, "batch_size": d.batch_size, "lr": d.lr, "lrs": lrs, "betas": [0.9, 0.95],
           "weight_decay": d.weight_decay, "grad_clip": d.grad_clip, "alpha": d.alpha, "seed": d.seed,
           "device": "cpu", "threads": threads}
    for peer in peers:
        out = work / peer
        try:
            venv = peer_venv("trl" if peer == "trl" else "torchtune", log)
        except subprocess.CalledProcessError as e:
            runs[peer] = {"failed": f"venv: {' '.join(map(str, e.cmd))[:200]} exited {e.returncode}"}
            continue
        done = out / WALL_FILE
        if args.resume and (out / "peer_record.json").is_file():
            log(f"[{peer}] reusing the finished run in {out}")
            rec = json.loads((out / "peer_record.json").read_text())
            timed = done.is_file()  # else a run from before the timing file: the peer process's own seconds
            wall = json.loads(done.read_text())["end_to_end_seconds"] if timed else rec["process_seconds"]
            runs[peer] = peer_entry(rec, out, wall, tokens, d.steps)
            if not timed and "failed" not in runs[peer]:
                runs[peer]["end_to_end_scope"] += " (the process's own seconds: a run from before bench_peers timed it)"
            continue
        job_path = work / f"{peer}-job.json"
        job_path.write_text(json.dumps({**job, "out": str(out)}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
               "HF_DATASETS_CACHE": str(work / "hf-datasets-cache")}
        log(f"[{peer}] training in {venv}")
        t0 = time.perf_counter()
        proc = subprocess.run([str(venv / "bin" / "python"), str(DRIVER), "--peer", peer, "--job", str(job_path)],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (work / f"{peer}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not (out / "peer_record.json").is_file():
            runs[peer] = {"failed": f"exit {proc.returncode}: {one_line(proc.stderr or proc.stdout)}",
                          "end_to_end_seconds": round(wall, 1)}
            log(f"[{peer}] failed: {runs[peer]['failed']}")
            continue
        rec = json.loads((out / "peer_record.json").read_text())
        done.write_text(json.dumps({"end_to_end_seconds": wall}))
        runs[peer] = peer_entry(rec, out, wall, tokens, d.steps)

    # 4. every student evaluated the same way
    init_q = quality_of(init_dir, teacher, heldout, other)
    for label, r in runs.items():
        if "failed" in r:
            continue
        try:
            r["quality"] = quality_of(Path(r["student_dir"]), teacher, heldout, other)
        except Exception as e:  # noqa: BLE001
            r["failed"] = f"eval: {type(e).__name__}: {one_line(str(e))}"
            continue
        if args.run_eval:
            from edgedistil.eval.run import run_eval, summary

            rec = run_eval(r["student_dir"], teacher_dir, work / f"{label}-eval.json", subset=recipe.eval.subset,
                           log=log, heldout_text=heldout_text)
            r["eval"] = {k: v for k, v in summary(rec).items() if k in ("benchmarks", "behaviour", "seconds")}

    # 5. side by side
    def ppl(label, where):
        q = runs.get(label, {}).get("quality")
        return q[where]["student_perplexity"] if q and where in q else None

    compare = {}
    for ours_label, peer in [(o, p) for o, _ in ours if o != "edgedistil_live" for p in peers]:
        if "quality" not in runs.get(peer, {}) or "quality" not in runs.get(ours_label, {}):
            compare[f"{ours_label} vs {peer}"] = {"compared": False, "why": runs.get(peer, {}).get("failed")
                             or runs.get(ours_label, {}).get("failed")}
            continue
        speed = runs[ours_label]["train_tokens_per_s"] / runs[peer]["train_tokens_per_s"]
        wheres = ["in_domain"] + (["heldout_corpus"] if other is not None else [])
        better = {w: ppl(ours_label, w) <= ppl(peer, w) for w in wheres}
        compare[f"{ours_label} vs {peer}"] = {
            "compared": True,
            "speedup_train_tokens_per_s": round(speed, 3),
            "speedup_end_to_end": round(runs[peer]["end_to_end_seconds"] / runs[ours_label]["end_to_end_seconds"], 3),
            "perplexity_ours_vs_peer": {w: [round(ppl(ours_label, w), 3), round(ppl(peer, w), 3)] for w in wheres},
            "quality_equal_or_better": better,
            "goal_met": speed >= SPEED_GOAL and all(better.values()),
        }
    result = {
        "recipe": name,
        "command": "python scripts/bench_peers.py" + "".join(
            f" {k} {v}" for k, v in (("--config", args.config), ("--steps", args.steps),
                                     ("--eval-tokens", args.eval_tokens), ("--threads", args.threads)) if v)
            + (f" --peers {args.peers}" if args.peers != ",".join(PEERS) else "")
            + (" --no-live" if args.no_live else "") + (" --run-eval" if args.run_eval else "")
            + (f" --work {args.work} --resume" if args.resume else ""),
        "teacher": str(teacher_dir), "corpus": corpus.name, "heldout_corpus": other_name,
        "student": {k: design.get(k) for k in ("layers", "init", "teacher_layers") if k in design},
        "same_for_every_run": {
            "student_init": "one HF folder (safetensors) saved before training; every run loads it",
            "windows": f"{len(windows)} windows of {data.seq_len + 1} tokens, one file, in training order "
                       f"({d.batch_size} per step)",
            "windows_equal_teacher_cache_blocks": windows_match_cache,
            "steps": d.steps, "batch_size": d.batch_size, "seq_len": data.seq_len,
            "lr": {"peak": d.lr, "warmup_steps": d.warmup_steps,
                   "schedule": "edgedistil's: linear warmup from lr/warmup, cosine to 10% of the peak; the peers get "
                               "the same per-step values through a LambdaLR"},
            "optimizer": f"AdamW betas (0.9, 0.95), eps 1e-8, weight_decay {d.weight_decay}, grad clip {d.grad_clip}",
            "precision": "the peers fp32 on CPU; edgedistil as each run's precision says", "threads": threads,
            "train_tokens": tokens,
            "eval": f"edgedistil.distill.evaluate.compare_on_heldout, {len(heldout) * data.seq_len} held-out tokens "
                    "per corpus, T 1",
        },
        "differences": {
            "edgedistil": f"the recipe trains from the teacher's top-{d.teacher_topk} logits (KL restricted to the "
                          "teacher's top-k, renormalized); edgedistil_live uses the full vocabulary as the peers do",
            "trl": "GKDTrainer's loss is the divergence alone: no CE term (alpha 1.0 in our terms, not "
                   f"{d.alpha}); it runs the student and teacher on all {data.seq_len + 1} tokens of a window and "
                   f"drops the last position's logits; TRL 1.16's stable DistillationTrainer is on-policy only "
                   "(it generates completions from prompts), so it cannot train on fixed windows",
            "torchtune": "torchtune 0.6.1's KD recipe trains LoRA adapters only; 'torchtune' is its loop, losses "
                         "(ForwardKLLoss = -sum p_t log p_s, KL up to the teacher's entropy: same gradient) and "
                         "checkpointer with the student's full weights trainable (model setup and save overridden in "
                         "scripts/peers/train_peer.py); 'torchtune_lora' is the recipe as shipped (rank 32, alpha 64, "
                         "q/k/v/output and MLP); the recipe scales gradients by 1/tokens after a per-token mean loss, "
                         "so its clip_grad_norm acts on gradients ~1/(batch x seq_len) the size (clipping rarely "
                         "fires); it runs the model on all seq_len + 1 tokens and ignores the last label",
        },
        "init_quality": init_q,
        "runs": runs,
        "compare_vs_peers": compare,
        "goal": f"edgedistil's held-out perplexity <= each peer's (in-domain and on the held-out corpus) at "
                f"{SPEED_GOAL}x their training tokens/s or more",
        "goal_met": bool(compare) and all(c.get("goal_met") for k, c in compare.items()
                                          if k.startswith("edgedistil vs ")),  # the recipe as it ships
        "machine": machine(load_before),
    }
    write_json(dest, result)
    for label, r in runs.items():
        if "failed" in r:
            print(f"{label:16s} FAILED: {r['failed']}")
        else:
            q = r["quality"]
            print(f"{label:16s} {r['train_tokens_per_s']:8.1f} tok/s  ppl {q['in_domain']['student_perplexity']:.2f}"
                  + (f"  {other_name} ppl {q['heldout_corpus']['student_perplexity']:.2f}" if other is not None
                     else "") + f"  top-1 {q['in_domain']['top1_agreement_with_teacher']:.3f}")
    print(f"written to {dest}")
    if tmp_ctx:
        tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
