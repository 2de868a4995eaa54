"""The `edgedistil` command: one verb per stage, and `build` for the whole chain.

Every verb takes --config FILE (a recipe TOML; the built-in default recipe when absent) and --out DIR (the run
folder). Problems the user can fix are printed as one line on stderr with exit code 2; a failed budget check
exits 1.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import click

from edgedistil import __version__
from edgedistil.build import CHAIN
from edgedistil.config import MODELS_DIR, TARGETS, load_recipe, load_target
from edgedistil.quantize import METHODS
from edgedistil.errors import EdgeError

DEFAULT_OUT = "edgedistil-run"
EXIT_USER_ERROR, EXIT_CHECK_FAILED = 2, 1
# Environment failures the user can fix, as opposed to bugs, which keep their traceback.
OS_ERRORS = {
    errno.ENOSPC: "free disk space, or pass --out on another disk",
    errno.EDQUOT: "free space in your quota, or pass --out on another disk",
    errno.EFBIG: "lift the file size limit (ulimit -f), or pass --out on another disk",
    errno.EACCES: "make the folder writable, or pass --out elsewhere",
    errno.EROFS: "pass --out on a writable disk",
}


def log(msg: str) -> None:
    click.echo(msg, err=True)


def config_option(f):
    f = click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one recipe key, e.g. --set distill.temperature=1 (repeatable; the value is TOML, "
                          "or a bare string).")(f)
    return click.option("--config", "config", type=click.Path(path_type=Path), default=None,
                        help="Recipe TOML (default: the built-in recipe, models/default.toml).")(f)


def out_option(f):
    return click.option("--out", "out", type=click.Path(path_type=Path), default=Path(DEFAULT_OUT),
                        show_default=True, help="Run folder: stage folders and dist/<target>/ go here.")(f)


def target_option(required=True):
    return click.option("--target", "target", required=required, metavar="|".join(TARGETS),
                        help="Target runtime profile from targets/.")


def min_ios_option(f):
    # a profile key on the command line: it overrides targets/<target>.toml's min_ios for this run
    return click.option("--min-ios", "min_ios", type=click.Choice(["17", "18"]),
                        callback=lambda c, p, v: {"min_ios": int(v)} if v else {},
                        help="ios only: 18 = stateful KV cache (default, from targets/ios.toml), 17 = cache as "
                             "inputs and outputs.")(f)


def make_run(config, sets, out, teacher=None, data=None):
    """The run folder and its recipe; --out is checked before anything is written."""
    from edgedistil.build import Run, check_out

    run = Run(out=Path(out), recipe=load_recipe(config, sets), teacher_override=teacher, data_override=data, log=log)
    check_out(run.out)
    return run


class Group(click.Group):
    """Turns EdgeError into one line and an exit code, and Ctrl-C into a clean message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeError as e:
            click.echo(f"edgedistil: error: {e.line()}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except OSError as e:
            if e.errno not in OS_ERRORS:
                raise
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"edgedistil: error: {e.strerror or e}{where}; fix: {OS_ERRORS[e.errno]}; finished stages "
                       "are kept and half-written files were removed", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("edgedistil: interrupted; finished stages are kept and half-written files were removed",
                       err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=f"Targets: {', '.join(TARGETS)} (profiles in targets/, each naming its module in "
                    "edgedistil/targets/).")
@click.version_option(__version__, prog_name="edgedistil")
def main():
    """Distill a causal LM into a small student, then export, quantize, convert, benchmark and check it for
    phones and browsers."""


@main.command()
@config_option
@out_option
def init(config, sets, out):
    """Write a commented recipe, edgedistil.toml, to start from."""
    from edgedistil.build import check_out
    from edgedistil.errors import atomic_file

    from edgedistil.config import set_in_text

    src = Path(config) if config else MODELS_DIR / "default.toml"
    recipe = load_recipe(src, sets)  # never hand out a recipe that does not load
    text = src.read_text(encoding="utf-8")
    for item in sets:  # written into the copy, so the file says what --set said
        text = set_in_text(text, item)
    check_out(Path(out))
    dest = Path(out) / "edgedistil.toml"
    if dest.exists():
        raise EdgeError(f"{dest} already exists", "edit it, or choose another --out")
    with atomic_file(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
        written = load_recipe(tmp)
        if any(written.section(n) != recipe.section(n) for n in vars(recipe) if n not in ("name", "path")):
            raise EdgeError(f"init could not write {' '.join(sets)} into the copy of {src}",
                            "run init without --set and edit edgedistil.toml")
    log(f"wrote {dest}; edit it, then: edgedistil build --target web --config {dest} --out {out}")


@main.command()
@config_option
@out_option
@click.option("--teacher", help="Teacher: an HF model folder (overrides the recipe).")
@click.option("--data", help="Corpus: kjv, pydoc, tiny, a UTF-8 .txt file or a .jsonl file with a \"text\" field "
              "(overrides the recipe).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint ([distill] checkpoint_every), "
              "bit for bit.")
def distill(config, sets, out, teacher, data, resume):
    """Distill a student from the teacher: response KD (forward KL, reverse KL or JSD, plus CE), optionally with
    hidden states, or sequence-level KD; runs under `torchrun --nproc_per_node N` too (DDP)."""
    from edgedistil.build import check_inputs, distill_stage

    run = make_run(config, sets, out, teacher, data)
    check_inputs(run)
    record = run.stage(distill_stage(resume=resume), force=True)
    if record.get("rank", 0) == 0:  # under torchrun, rank 0 reports
        click.echo(json.dumps(record["quality"], indent=2))


@main.command()
@config_option
@out_option
@click.option("--role", type=click.Choice(["student", "teacher"]), default="student", show_default=True)
@click.option("--model", "model", type=click.Path(path_type=Path), help="HF model folder (default: by --role).")
@click.option("--teacher", help="Teacher HF folder, for --role teacher (overrides the recipe).")
def export(config, sets, out, role, model, teacher):
    """Export a model to ONNX (prefill + decode graph) and check it against PyTorch."""
    from edgedistil.build import export_stage

    record = make_run(config, sets, out, teacher).stage(export_stage(role, model), force=True)
    click.echo(json.dumps(record["fidelity"], indent=2))


@main.command()
@config_option
@out_option
@click.option("--method", type=click.Choice(list(METHODS)), default="int8", show_default=True,
              help="int8: dynamic, per channel; int8_wo: MatMulNBits 8-bit, smoothed and GPTQ-rounded, int8 embedding "
              "lookup (ONNX Runtime); int8_storage: int8 weights folded to fp32 at load (the web bundle's: "
              "onnxruntime-web's fp32 kernels are its fast ones); int8_static: QDQ calibrated on "
              "held-out decoding; int4: MatMulNBits GPTQ-rounded (the recipe's [quantize] block_size and rounding); "
              "fp16: fp16 weight storage.")
@click.option("--model", "model", type=click.Path(path_type=Path), help="Exported model.onnx (default: the run's "
              "student export).")
def quantize(config, sets, out, method, model):
    """Quantize the exported student and check it against the fp32 PyTorch student."""
    from edgedistil.build import quantize_stage

    record = make_run(config, sets, out).stage(quantize_stage(method, model), force=True)
    click.echo(json.dumps(record["fidelity"], indent=2))


@main.command()
@config_option
@out_option
@target_option()
@min_ios_option
def convert(config, sets, out, target, min_ios):
    """Assemble dist/<target>/ from the run folder's records and converted models."""
    from edgedistil.build import check_target, convert as run_convert

    run = make_run(config, sets, out)
    run.profile_changes = min_ios
    check_target(run, target)  # an unknown target or a profile that cannot build fails before any work
    run_convert(run, target)
    log(f"bundle: {Path(out) / 'dist' / target}")


@main.command()
@config_option
@out_option
@target_option()
@click.option("--bundle", type=click.Path(path_type=Path), help="A built bundle (dist/<target>/).")
@click.option("--model", "model", type=click.Path(path_type=Path), help="A model file to benchmark instead.")
@click.option("--teacher-model", type=click.Path(path_type=Path), help="Also benchmark this teacher model file.")
@click.option("--prompt-tokens", type=int, default=None, help="Prompt length (default: the recipe's prefill_len).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON on stdout.")
@click.option("--device", "device", default=None, metavar="SERIAL", is_flag=False, flag_value="",
              help="android: run on a phone over adb (the only one attached, or SERIAL).")
@click.option("--benchmark-tool", type=click.Path(path_type=Path),
              help="android --device: LiteRT's benchmark_model binary for arm64 (see docs/android.md).")
@click.option("--emulator", is_flag=True,
              help="android --bundle RUN/dist/android: run the bundle on an emulated ARM64 CPU (QEMU; the arm64 root "
                   "is set up once into the cache) beside this host, and write the figures into its manifest.")
def bench(config, sets, out, target, bundle, model, teacher_model, prompt_tokens, as_json, device, benchmark_tool,
          emulator):
    """Benchmark on the target runtime: prefill and decode tokens/s, TTFT, peak memory (student vs teacher).

    With --target web --bundle DIR the bundle's own page runs in headless Chromium (/usr/bin/chromium, or
    $EDGEDISTIL_CHROMIUM) beside native onnxruntime on the same files."""
    from edgedistil.build import check_out
    from edgedistil.config import load_target
    from edgedistil.errors import write_json
    from edgedistil.targets import BenchRequest, target_of

    profile = load_target(target)
    module = target_of(profile)
    if bool(bundle) == bool(model):
        raise EdgeError("bench needs exactly one of --bundle DIR or --model FILE", "pass one of them")
    if device is not None and not module.device_bench:
        on = [t for t in TARGETS if target_of(t).device_bench]
        raise EdgeError(f"--device is for --target {' or '.join(on)}, not {target}", "drop --device")
    if emulator and not module.device_bench:
        raise EdgeError(f"--emulator is for --target android, not {target}", "drop --emulator")
    if emulator and not bundle:
        raise EdgeError("--emulator needs --bundle RUN/dist/android (it compares the bundle with the run's PyTorch "
                        "student)", "pass --bundle instead of --model")
    recipe = load_recipe(config, sets)
    check_out(Path(out))
    record = module.bench(BenchRequest(profile, recipe, bundle, model, teacher_model, prompt_tokens, device,
                                       benchmark_tool, log, emulator))
    write_json(Path(out) / "bench.json", record)
    click.echo(json.dumps(record, indent=2) if as_json else f"wrote {Path(out) / 'bench.json'}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--budgets", type=click.Path(path_type=Path), help="Budgets TOML (default: the bundle target's profile).")
@click.option("--baseline", type=click.Path(path_type=Path), help="A previous bundle: fail on a regression against it.")
@click.option("--max-regression", type=float, default=10.0, show_default=True,
              help="Percent a figure may get worse than the baseline.")
@click.option("--noise", type=click.Choice(["fail", "pass"]), default="fail", show_default=True,
              help="Fate of a budget whose limit lies inside the measured spread over repeats.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
@click.option("--device", help="A named device profile (targets/devices/) or its TOML: show its projected decode "
                               "speed, an estimate (default: the target profile's device).")
def check(bundle, budgets, baseline, max_regression, noise, fmt, device):
    """Check a bundle's measured figures against budgets (and a baseline); exit 1 when any fails."""
    from edgedistil.check.budgets import compare_baseline, evaluate, load_bundle_manifest, passed, render
    from edgedistil.check.devices import load_device, project
    from edgedistil.config import load_budget_file, load_target

    manifest = load_bundle_manifest(bundle)
    profile = load_target(manifest["target"])
    limits = load_budget_file(budgets) if budgets else profile.budgets
    device = device or profile.device
    estimate = project(manifest, load_device(device)) if device else None
    rows = evaluate(manifest, limits, noise_passes=noise == "pass", estimate=estimate)
    if baseline:
        rows += compare_baseline(manifest, load_bundle_manifest(baseline), max_regression)
    click.echo(render(rows, fmt, manifest, estimate))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(f"### edgedistil check: {bundle}\n\n" + render(rows, "markdown", manifest, estimate) + "\n\n")
    if not passed(rows):
        sys.exit(EXIT_CHECK_FAILED)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
def verify(bundle):
    """Check every file of a bundle against its manifest sha256, and that its model loads and runs."""
    from edgedistil.check.verify import verify_bundle

    click.echo(json.dumps(verify_bundle(bundle), indent=2))


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_option
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Folder for report.html and summary.md (default: RUN/report).")
def report(run, config, sets, out):
    """Write report.html (plots inline) and summary.md from a run folder's records."""
    from edgedistil.build import check_out
    from edgedistil.report.html import run_report

    load_recipe(config, sets)  # the report reads records only, but a recipe named here must still be valid
    check_out(Path(out) if out else Path(run) / "report")
    run_report(Path(run), Path(out) if out else Path(run) / "report", log=log)


@main.command("eval")
@click.argument("source", metavar="RUN|HF_DIR", type=click.Path(path_type=Path))
@click.option("--teacher", type=click.Path(path_type=Path),
              help="Teacher HF folder (default: the one a run folder's distill record names; none for an HF folder).")
@click.option("--full", is_flag=True, help="Whole benchmark sets instead of the fast subset (HellaSwag alone takes "
              "about an hour for the embedded teacher on 2 CPU cores).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="eval.json to write (default: RUN/eval/eval.json, or ./eval.json for an HF folder).")
@click.option("--benchmarks", type=click.Path(path_type=Path),
              help="A folder of <task>.jsonl items ({context, choices, gold}) instead of the five built-in benchmarks.")
@click.option("--new-tokens", type=int, default=80, show_default=True, help="Greedy tokens per chat answer.")
def eval_cmd(source, teacher, full, out, benchmarks, new_tokens):
    """Student quality beside the teacher: zero-shot HellaSwag, ARC-Easy/Challenge, PIQA, WinoGrande (acc,
    acc_norm, share of the teacher's margin above chance), greedy chat answers (ROUGE-L vs the teacher, end of
    turn, degenerate) and held-out agreement."""
    from edgedistil.eval.run import benchmark_folder, resolve_source, run_eval

    model_dir, teacher_dir, heldout, default_out = resolve_source(source, teacher)
    files = benchmark_folder(benchmarks) if benchmarks else None
    record = run_eval(model_dir, teacher_dir, out or default_out, subset="full" if full else "fast", log=log,
                      heldout_text=heldout, benchmarks=files, new_tokens=new_tokens)
    click.echo(json.dumps(record["benchmarks"]["mean"], indent=2))


@main.command()
@config_option
@out_option
@target_option(required=False)
@click.option("--teacher", help="Teacher: an HF model folder (overrides the recipe).")
@click.option("--data", help="Corpus (overrides the recipe): teacher-chat, kjv, pydoc or a UTF-8 .txt file.")
@click.option("--min-speedup", type=float, default=None,
              help="Decode speedup over the teacher the student must reach (default: the target profile's "
                   "speedup_vs_teacher_min, else 2.0).")
@click.option("--layers", "layer_counts", default="4,6,8,10,12,15,20", show_default=True,
              help="Student layer counts to try (comma-separated).")
@click.option("--ffn", "ffn_widths", default="", help="FFN widths to try (comma-separated; default: the teacher's, "
              "3/4 and 1/2 of it).")
@click.option("--measure", type=int, default=3, show_default=True,
              help="Candidates whose decode speed is also measured on ONNX Runtime: the recommended one, the "
                   "fastest, the slowest, the middle, then the rest (0 = projections only).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timing rounds, the teacher and each measured candidate alternating, so that the machine's "
                   "drift falls on both sides of each ratio (the median ratio is reported).")
def plan(config, sets, out, target, teacher, data, min_speedup, layer_counts, ffn_widths, measure, rounds):
    """Candidate students before any training: parameters, size per precision, zero-shot quality after the
    measured prune, and decode speed projected from weight bytes (measured for a few), for layer counts x FFN
    widths; writes OUT/plan/plan.json, plan.md and plan.png."""
    from edgedistil.model import read_hf_config
    from edgedistil.plan import run_plan

    def ints(text, what):
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise EdgeError(f"--{what} {text!r} is not a comma-separated list of integers",
                            f"pass e.g. --{what} 6,8,10") from None

    counts = ints(layer_counts, "layers")
    widths = ints(ffn_widths, "ffn")
    if min_speedup is None:
        min_speedup = load_target(target).budgets.get("speedup_vs_teacher_min", 2.0) if target else 2.0
    if min_speedup <= 0:
        raise EdgeError(f"--min-speedup {min_speedup} is not positive", "pass e.g. --min-speedup 2")
    run = make_run(config, sets, out, teacher, data)
    teacher_dir = run.teacher_dir()
    if not widths:
        full = read_hf_config(teacher_dir).intermediate_size
        widths = [full, full * 3 // 4, full // 2]
    record = run_plan(teacher_dir, run.corpus(), run.recipe, run.out / "plan", counts, widths, min_speedup,
                      measure=measure, rounds=rounds, log=log)
    click.echo((run.out / "plan" / "plan.md").read_text())
    if record["recommended"] is None:
        sys.exit(EXIT_CHECK_FAILED)


@main.command()
@click.option("--target", "targets", required=True, multiple=True, metavar="|".join((*TARGETS, "all")),
              help="Target profile from targets/; repeat it, or say `all`, to build several from one distillation.")
@config_option
@out_option
@click.option("--teacher", help="Teacher: an HF model folder (overrides the recipe).")
@click.option("--data", help="Corpus: kjv, pydoc, tiny or a UTF-8 .txt file (overrides the recipe).")
@click.option("--budgets", type=click.Path(path_type=Path), help="Budgets TOML (default: the target profile's).")
@click.option("--force", "force_from", type=click.Choice(CHAIN), help="Rerun this stage and every stage after it.")
@min_ios_option
def build(targets, config, sets, out, teacher, data, budgets, force_from, min_ios):
    """Run the whole chain for a target with cached stages: distill, export, quantize, bench, convert, check."""
    import time

    from edgedistil.build import build as run_build
    from edgedistil.build import build_lock, check_inputs
    from edgedistil.check.budgets import passed as all_passed
    from edgedistil.check.budgets import render

    if "all" in targets:
        targets = TARGETS
    targets = list(dict.fromkeys(targets))  # repeated names build once
    run = make_run(config, sets, out, teacher, data)
    run.force_from = force_from
    run.profile_changes = min_ios
    check_inputs(run, targets, budgets)  # targets, profiles, devices, budgets, corpus, teacher: before any write
    t0 = time.perf_counter()
    failed = False
    with build_lock(run.out), open(run.out / "build.log", "a") as log_file:
        def tee(msg: str) -> None:
            log(msg)
            log_file.write(msg + "\n")
            log_file.flush()

        run.log = tee
        tee(f"edgedistil {__version__} build --target {' --target '.join(targets)} --out {out} "
            f"({time.strftime('%Y-%m-%d %H:%M:%S')})")
        results = {}
        try:
            for t in targets:
                results[t] = run_build(run, t, budgets)
        except BaseException:
            failed = True
            raise
        finally:
            if run.stages:
                tee("\nstages:")
                for s in run.stages:
                    tee(f"  {s['stage']:<18} {s['status']:<7} {s['seconds']:>7.1f} s")
            if failed and run.stages and run.stages[-1]["status"] == "failed":
                tee(f"stage {run.stages[-1]['stage']} failed; full log: {run.out / 'build.log'}; finished stages "
                    "stay cached for the next run")
    log(f"total {time.perf_counter() - t0:.1f} s\n")
    passed = True
    for t, (rows, manifest, estimate) in results.items():
        q, b, tb = manifest["quality"], manifest.get("bench") or {}, manifest.get("teacher_bench") or {}
        speed = (f"decode {b['decode_tokens_per_s']:.1f} vs {tb['decode_tokens_per_s']:.1f} tok/s "
                 f"({manifest['speedup_vs_teacher']:.2f}x)" if b.get("decode_tokens_per_s") and
                 tb.get("decode_tokens_per_s") else "speed: not measured on this host")
        log(f"[{t}] student {manifest['student']['parameters'] / 1e6:.1f}M params vs teacher "
            f"{manifest['student']['teacher_parameters'] / 1e6:.1f}M; held-out perplexity "
            f"{q['student_perplexity']:.2f} vs {q['teacher_perplexity']:.2f}; {speed}")
        click.echo(f"\n{t}:\n" + render(rows, "table", manifest, estimate))
        click.echo(f"bundle: {Path(out) / 'dist' / t}")
        passed = passed and all_passed(rows)
    if not passed:
        sys.exit(EXIT_CHECK_FAILED)


if __name__ == "__main__":
    main()
