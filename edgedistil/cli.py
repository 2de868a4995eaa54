"""The `edgedistil` command: one verb per stage, and `build` for the whole chain.

Every verb takes --config FILE (a recipe TOML; the built-in default recipe when absent) and --out DIR (the run
folder). Problems the user can fix are printed as one line on stderr with exit code 2; a failed budget check
exits 1; a verb that is not built yet says so and exits 3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgedistil import __version__
from edgedistil.config import MODELS_DIR, TARGETS, load_recipe
from edgedistil.errors import EdgeError

DEFAULT_OUT = "edgedistil-run"
EXIT_USER_ERROR, EXIT_CHECK_FAILED, EXIT_NOT_BUILT = 2, 1, 3


def log(msg: str) -> None:
    click.echo(msg, err=True)


def config_option(f):
    return click.option("--config", "config", type=click.Path(path_type=Path), default=None,
                        help="Recipe TOML (default: the built-in recipe, models/default.toml).")(f)


def out_option(f):
    return click.option("--out", "out", type=click.Path(path_type=Path), default=Path(DEFAULT_OUT),
                        show_default=True, help="Run folder: stage folders and dist/<target>/ go here.")(f)


def target_option(required=True):
    return click.option("--target", "target", required=required, metavar="|".join(TARGETS),
                        help="Target runtime profile from targets/.")


def make_run(config, out, teacher=None, data=None):
    from edgedistil.build import Run

    return Run(out=Path(out), recipe=load_recipe(config), teacher_override=teacher, data_override=data, log=log)


class Group(click.Group):
    """Turns EdgeError into one line and an exit code, and Ctrl-C into a clean message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeError as e:
            click.echo(f"edgedistil: error: {e.line()}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("edgedistil: interrupted; finished stages are kept and half-written files were removed",
                       err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgedistil")
def main():
    """Distill a causal LM into a small student, then export, quantize, convert, benchmark and check it for
    phones and browsers."""


@main.command()
@config_option
@out_option
def init(config, out):
    """Write a commented recipe, edgedistil.toml, to start from."""
    from edgedistil.errors import atomic_file

    src = Path(config) if config else MODELS_DIR / "default.toml"
    load_recipe(src)  # never hand out a recipe that does not load
    dest = Path(out) / "edgedistil.toml"
    if dest.exists():
        raise EdgeError(f"{dest} already exists", "edit it, or choose another --out")
    with atomic_file(dest) as tmp:
        tmp.write_text(src.read_text())
    log(f"wrote {dest}; edit it, then: edgedistil build --target web --config {dest} --out {out}")


@main.command()
@config_option
@out_option
@click.option("--teacher", help="Teacher: an HF model folder (overrides the recipe).")
@click.option("--data", help="Corpus: kjv, pydoc, tiny or a UTF-8 .txt file (overrides the recipe).")
def distill(config, out, teacher, data):
    """Distill a student from the teacher (response KD: alpha*T^2*KL + (1-alpha)*CE)."""
    from edgedistil.build import do_distill

    record = do_distill(make_run(config, out, teacher, data), force=True)
    click.echo(json.dumps(record["quality"], indent=2))


@main.command()
@config_option
@out_option
@click.option("--role", type=click.Choice(["student", "teacher"]), default="student", show_default=True)
@click.option("--model", "model", type=click.Path(path_type=Path), help="HF model folder (default: by --role).")
@click.option("--teacher", help="Teacher HF folder, for --role teacher (overrides the recipe).")
def export(config, out, role, model, teacher):
    """Export a model to ONNX (prefill + decode graph) and check it against PyTorch."""
    from edgedistil.build import do_export

    record = do_export(make_run(config, out, teacher), role, model, force=True)
    click.echo(json.dumps(record["fidelity"], indent=2))


@main.command()
@config_option
@out_option
@click.option("--method", type=click.Choice(["int8"]), default="int8", show_default=True)
@click.option("--model", "model", type=click.Path(path_type=Path), help="Exported model.onnx (default: the run's "
              "student export).")
def quantize(config, out, method, model):
    """Quantize the exported student and check it against the fp32 PyTorch student."""
    from edgedistil.build import do_quantize

    record = do_quantize(make_run(config, out), method, model, force=True)
    click.echo(json.dumps(record["fidelity"], indent=2))


@main.command()
@config_option
@out_option
@target_option()
def convert(config, out, target):
    """Assemble dist/<target>/ from the run folder's records and quantized model."""
    from edgedistil.build import do_convert
    from edgedistil.config import load_target

    load_target(target)
    do_convert(make_run(config, out), target, force=True)
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
def bench(config, out, target, bundle, model, teacher_model, prompt_tokens, as_json):
    """Benchmark on the target runtime: prefill and decode tokens/s, TTFT, peak memory (student vs teacher)."""
    from edgedistil.bench.ort import run_bench
    from edgedistil.build import not_built
    from edgedistil.check.budgets import load_bundle_manifest
    from edgedistil.config import BUILT_TARGETS, load_target
    from edgedistil.errors import write_json

    profile = load_target(target)
    if target not in BUILT_TARGETS:
        raise not_built(target)
    if bool(bundle) == bool(model):
        raise EdgeError("bench needs exactly one of --bundle DIR or --model FILE", "pass one of them")
    recipe = load_recipe(config)
    if bundle:
        manifest = load_bundle_manifest(bundle)
        model = Path(bundle) / manifest["graphs"][0]["file"]
        prefill_len = manifest["graphs"][0]["tokens_per_call"]
    else:
        prefill_len = recipe.export.prefill_len
    models = {"student": Path(model)}
    if teacher_model:
        models["teacher"] = Path(teacher_model)
    # token ids do not change speed; a fixed pattern keeps runs comparable without needing the tokenizer
    prompt = [(7 * i + 3) % 97 for i in range(prompt_tokens or prefill_len)]
    record = run_bench(models, prompt, prefill_len, recipe.bench.new_tokens, recipe.bench.repeats, profile.threads,
                       log=log)
    write_json(Path(out) / "bench.json", record)
    click.echo(json.dumps(record, indent=2) if as_json else f"wrote {Path(out) / 'bench.json'}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--budgets", type=click.Path(path_type=Path), help="Budgets TOML (default: the bundle target's profile).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
def check(bundle, budgets, fmt):
    """Check a bundle's measured figures against budgets; exit 1 when any budget fails."""
    from edgedistil.check.budgets import evaluate, load_bundle_manifest, render
    from edgedistil.config import load_budget_file, load_target

    manifest = load_bundle_manifest(bundle)
    limits = load_budget_file(budgets) if budgets else load_target(manifest["target"]).budgets
    rows = evaluate(manifest, limits)
    text = render(rows, fmt)
    click.echo(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(render(rows, "markdown") + "\n")
    if not all(r["status"] == "pass" for r in rows):
        sys.exit(EXIT_CHECK_FAILED)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
def verify(bundle):
    """Check every file of a bundle against its manifest sha256, and that its model loads and runs."""
    from edgedistil.check.verify import verify_bundle

    click.echo(json.dumps(verify_bundle(bundle), indent=2))


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@out_option
def report(run, out):
    """Write report.html and summary.md from a run folder's records (not built yet)."""
    click.echo("edgedistil: report is not built yet in this version; the records it will read are the JSON files "
               f"under {run}", err=True)
    sys.exit(EXIT_NOT_BUILT)


@main.command()
@target_option()
@config_option
@out_option
@click.option("--teacher", help="Teacher: an HF model folder (overrides the recipe).")
@click.option("--data", help="Corpus: kjv, pydoc, tiny or a UTF-8 .txt file (overrides the recipe).")
@click.option("--budgets", type=click.Path(path_type=Path), help="Budgets TOML (default: the target profile's).")
def build(target, config, out, teacher, data, budgets):
    """Run the whole chain for a target with cached stages: distill, export, quantize, bench, convert, check."""
    import time

    from edgedistil.build import build as run_build
    from edgedistil.check.budgets import render
    from edgedistil.config import load_budget_file, load_target

    load_target(target)  # an unknown target or a bad profile fails before any work
    if budgets:
        load_budget_file(budgets)
    run = make_run(config, out, teacher, data)
    t0 = time.perf_counter()
    try:
        rows, manifest = run_build(run, target, budgets)
    finally:
        if run.stages:
            log("\nstages:")
            for s in run.stages:
                log(f"  {s['stage']:<18} {s['status']:<7} {s['seconds']:>7.1f} s")
    log(f"total {time.perf_counter() - t0:.1f} s\n")
    q, b, tb = manifest["quality"], manifest["bench"], manifest["teacher_bench"]
    log(f"student {manifest['student']['parameters'] / 1e6:.1f}M params vs teacher "
        f"{manifest['student']['teacher_parameters'] / 1e6:.1f}M; held-out perplexity {q['student_perplexity']:.2f} "
        f"vs {q['teacher_perplexity']:.2f}; decode {b['decode_tokens_per_s']:.1f} vs {tb['decode_tokens_per_s']:.1f} "
        f"tok/s ({manifest['speedup_vs_teacher']:.2f}x)")
    click.echo(render(rows, "table"))
    click.echo(f"\nbundle: {Path(out) / 'dist' / target}")
    if not all(r["status"] == "pass" for r in rows):
        sys.exit(EXIT_CHECK_FAILED)


if __name__ == "__main__":
    main()
