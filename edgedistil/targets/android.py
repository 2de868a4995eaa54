"""Android phones through LiteRT-LM (.litertlm) and LiteRT (.tflite): the PyTorch student (and the teacher, for the
side-by-side bench) converted by litert-torch into every variant, each checked with the LiteRT interpreter, fp32
and the shipped variant packed as .litertlm and run through LiteRT-LM; host LiteRT benches at 1, 2 and 4 threads
beside LiteRT-LM's own benchmark; dist/android/ ships the profile's variant. No ONNX stages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgedistil.build import Run, bench_prompt, eval_record
from edgedistil.config import Recipe, TargetProfile
from edgedistil.errors import EdgeError, atomic_dir, read_json, write_json
from edgedistil.records import folder_fingerprint, sha256_file, stage_key
from edgedistil.targets import BenchRequest, Stage, Target, fixed_prompt, manifest_figures


def options(profile: TargetProfile, recipe: Recipe, **changes):
    from edgedistil.convert.android import AndroidOptions

    e = recipe.export
    return AndroidOptions(bundle_variant=profile.quantization, prefill_len=e.prefill_len, max_len=e.max_len,
                          **changes).check()


def check(profile: TargetProfile, recipe: Recipe) -> None:
    options(profile, recipe)  # a profile naming an unknown variant fails now, not after distillation


def stages(profile: TargetProfile, recipe: Recipe) -> list[Stage]:
    variant = profile.quantization
    student_opts = options(profile, recipe)
    teacher_opts = options(profile, recipe, fidelity_segments=2, greedy_tokens=32)
    teacher_opts = dataclasses.replace(teacher_opts, variants=(teacher_opts.bundle_variant,))

    def litert(role: str, opts) -> Stage:
        """LiteRT variants of the student (all of them, each checked), or of the teacher (the bundle's variant
        only, for the side-by-side bench)."""
        def model(run: Run) -> Path:
            return run.out / "distill" / "student" if role == "student" else run.teacher_dir()

        def key(run: Run) -> str:
            if role == "student" and not (model(run) / "config.json").is_file():
                raise EdgeError(f"{model(run)} has no config.json", f"run `edgedistil distill --out {run.out}` first")
            upstream = run.key_of("distill") if role == "student" else folder_fingerprint(model(run))
            return stage_key("litert", role, opts.stage_config(), upstream)

        def go(run: Run, folder: Path) -> dict:
            from edgedistil.convert.android import run_litert

            return run_litert(model(run), folder, run.heldout_ids(), opts, role=role, log=run.log)

        return Stage(f"convert[litert-{role}]", f"litert/{role}", key, go, convert=role == "student",
                     on_error="" if role == "student" else "not converted, the bench runs the student alone")

    def models(run: Run) -> dict[str, Path]:
        found = {role: run.out / "litert" / role / variant / "model.tflite" for role in ("student", "teacher")}
        if not found["student"].is_file():
            raise EdgeError(f"{found['student']} does not exist",
                            f"run `edgedistil build --target android --out {run.out}`")
        if not found["teacher"].is_file():  # the teacher did not convert (too big for this machine): student alone
            del found["teacher"]
        return found

    def bench_key(run: Run) -> str:
        from edgedistil.bench.litert import METHOD

        return stage_key("bench-android", {k: sha256_file(v) for k, v in models(run).items()},
                         run.recipe.section("bench"), profile.threads, METHOD)

    def host_bench(run: Run, folder: Path) -> dict:
        """Host LiteRT at 1, 2 and 4 threads: the student's bundle variant beside the teacher in the same variant."""
        from edgedistil.bench.litert import run_bench_android

        b = run.recipe.bench
        record = run_bench_android(models(run), bench_prompt(run), b.new_tokens, b.repeats, profile.threads,
                                   max_len=run.recipe.export.max_len, log=run.log)
        with atomic_dir(folder) as tmp:
            write_json(tmp / "record.json", record)
        return record

    def bundle_key(run: Run) -> str:
        return stage_key("convert", profile.target, variant, [run.key_of(n) for n in (
            "distill", "convert[litert-student]", "bench[android]", "eval")])

    def bundle(run: Run, folder: Path) -> dict:
        """dist/android/ from the litert stage's shipped variant and the records (the host bench when it ran; the
        `convert` verb on a fresh run has none, and the bundle says so)."""
        from edgedistil.convert.android import run_convert_android

        records = {"litert": read_json(run.out / "litert" / "student" / "record.json", "litert record"),
                   "distill": read_json(run.out / "distill" / "record.json", "distill record"),
                   "eval": eval_record(run),
                   "recipe_name": run.recipe.name}
        bench = run.out / "bench-android" / "record.json"
        if bench.is_file():
            records["bench_android"] = read_json(bench, "android bench record")
        return run_convert_android(run.out / "litert" / "student", run.out / "distill" / "student", folder, records,
                                   variant, log=run.log)

    return [litert("student", student_opts), litert("teacher", teacher_opts),
            Stage("bench[android]", "bench-android", bench_key, host_bench),
            Stage(f"convert[{profile.target}]", f"dist/{profile.target}", bundle_key, bundle, convert=True)]


def bench(req: BenchRequest) -> dict:
    """Host LiteRT (1, 2, 4 threads), or with --device a phone over adb with LiteRT's benchmark_model."""
    from edgedistil.check.budgets import load_bundle_manifest

    if req.emulator:
        return emulated_bench(req)
    model = Path(req.model) if req.model else None
    if req.bundle:
        manifest = load_bundle_manifest(req.bundle)
        model = Path(req.bundle) / manifest["graphs"][0]["file"]
        prefill_len, max_len = manifest["runtime"]["prefill_len"], manifest["kv_cache"]["max_len"]
    else:
        prefill_len, max_len = req.recipe.export.prefill_len, req.recipe.export.max_len
    if req.device is not None:
        from edgedistil.bench.android_device import run_device_bench

        return run_device_bench(model, req.benchmark_tool, req.device or None, req.profile.threads, prefill_len,
                                max_len, log=req.log)
    from edgedistil.bench.litert import run_bench_android

    models = {"student": model, **({"teacher": Path(req.teacher_model)} if req.teacher_model else {})}
    b = req.recipe.bench
    return run_bench_android(models, fixed_prompt(req.prompt_tokens or prefill_len), b.new_tokens, b.repeats,
                             req.profile.threads, max_len=max_len, log=req.log)


def emulated_bench(req: BenchRequest) -> dict:
    """The bundle on emulated ARM64 and on this host against the run's fp32 PyTorch student (the bundle must sit in
    its run folder, RUN/dist/android); the record also goes into the bundle's manifest as `emulated_arm64`."""
    from edgedistil.bench.emulated_arm64 import run_emulated_bench, write_into_manifest
    from edgedistil.check.budgets import load_bundle_manifest
    from edgedistil.convert.android import AndroidOptions

    bundle = Path(req.bundle)
    manifest = load_bundle_manifest(bundle)
    run = Run(bundle.resolve().parent.parent, req.recipe, log=req.log)
    student = run.out / "distill" / "student"
    if not (student / "config.json").is_file() or not (run.out / "distill" / "heldout.txt").is_file():
        raise EdgeError(f"{bundle} is not inside the run folder that built it (no {student}/config.json or "
                        "heldout text beside it)", "pass --bundle RUN/dist/android of a `edgedistil build` run")
    teacher = run.out / "litert" / "teacher" / manifest["quantization"]["method"] / "model.tflite"
    opts = AndroidOptions()
    record = run_emulated_bench(bundle, manifest, run.heldout_ids(), student, teacher if teacher.is_file() else None,
                                req.recipe.bench.new_tokens, opts.fidelity_segments, opts.greedy_tokens, log=req.log)
    write_into_manifest(bundle, record)
    return record


def verify(bundle: Path, manifest: dict) -> list[dict]:
    from edgedistil.convert.android import verify_tflite

    return verify_tflite(bundle, manifest)


def artifacts(run: Path) -> list[dict]:
    """Every LiteRT variant of the student, with the host decode speed of the one the bench ran."""
    def read(path: Path) -> dict:
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    litert, bench = read(run / "litert" / "student" / "record.json"), read(run / "bench-android" / "record.json")
    rows = []
    for variant, rec in litert.get("variants", {}).items():
        b = next((r for r in bench.get("student", {}).values() if r["bytes"] == rec["bytes"]), None)
        rows.append({"name": f"student {variant} (LiteRT)", "mb": rec["bytes"] / 1e6, "fidelity": rec["fidelity"],
                     "decode": b["decode_tokens_per_s"] if b and b["threads"] == bench["threads"] else None})
    return rows


def tokens_match(check: dict | None) -> float | None:
    """The share of the fp32 PyTorch student's greedy tokens that LiteRT-LM generated alike (all prompts). A prompt
    whose first difference is a near-tie in PyTorch's own logits counts whole: kernel rounding chose the other of
    two equal tokens there, and past it the two texts go on differently however faithful the file is."""
    if not check or not check["reference_tokens"]:
        return None
    alike = sum(p["reference_tokens"] if (p.get("divergence") or {}).get("near_tie") else p["tokens_matching"]
                for p in check["prompts"])
    return alike / check["reference_tokens"]


def figures(manifest: dict) -> dict[str, tuple[float | None, list | None]]:
    """The shared figures, and LiteRT-LM's: its own benchmark of the student's .litertlm (host CPU) and its greedy
    tokens against PyTorch, for the shipped variant and for fp32."""
    lm = manifest.get("litertlm_bench") or {}
    s = lm.get("student") or {}
    checks = (manifest.get("litertlm") or {}).get("checked_in_litertlm") or {}
    shipped = (manifest.get("quantization") or {}).get("method")

    def b(key):
        return s.get(key), s.get(key + "_spread")

    return {**manifest_figures(manifest),
            "litertlm_decode_tokens_per_s": b("decode_tokens_per_s"),
            "litertlm_prefill_tokens_per_s": b("prefill_tokens_per_s"),
            "litertlm_ttft_ms": b("ttft_ms"),
            "litertlm_peak_memory_mb": (s.get("peak_memory_mb"), None),
            "litertlm_speedup_vs_teacher": (lm.get("speedup_vs_teacher"), None),
            "litertlm_decode_vs_host_loop": (s.get("decode_vs_host_loop"), None),
            "litertlm_tokens_match": (tokens_match(checks.get(shipped)), None),
            "litertlm_fp32_tokens_match": (tokens_match(checks.get("fp32")), None),
            # `bench --emulator`: |top-1 on emulated ARM64 - top-1 on x86-64|, both against the fp32 PyTorch student
            "emulated_arm64_top1_gap": ((manifest.get("emulated_arm64") or {}).get("top1_gap"), None)}


LITERTLM_ROWS = (("decode_tokens_per_s", "decode tok/s", "{:.1f}"), ("prefill_tokens_per_s", "prefill tok/s", "{:.0f}"),
                 ("init_seconds", "init s", "{:.3f}"), ("ttft_ms", "TTFT ms", "{:.1f}"),
                 ("peak_memory_mb", "peak RSS MB", "{:.0f}"))


def report_blocks(manifest: dict) -> list[tuple]:
    """LiteRT-LM's own benchmark (student, teacher, ratio, beside our host loop on the same graph) and what
    LiteRT-LM generated against the fp32 PyTorch student, per variant and prompt."""
    blocks = []
    lm = manifest.get("litertlm_bench") or {}
    s, t = lm.get("student"), lm.get("teacher")
    if s:
        rows = [[label, fmt.format(s[k]), fmt.format(t[k]) if t else "-", f"{s[k] / t[k]:.2f}x" if t and t[k] else "-"]
                for k, label, fmt in LITERTLM_ROWS]
        if s.get("host_loop_decode_tokens_per_s"):
            host, host_t = s["host_loop_decode_tokens_per_s"], (t or {}).get("host_loop_decode_tokens_per_s")
            rows.append(["our host LiteRT loop, decode tok/s (same graph)", f"{host:.1f}",
                         f"{host_t:.1f}" if host_t else "-", f"{host / host_t:.2f}x" if host_t else "-"])
            rows.append(["LiteRT-LM decode / our loop", f"{s['decode_vs_host_loop']:.2f}x",
                         f"{t['decode_vs_host_loop']:.2f}x" if t else "-", ""])
        blocks += [("p", [f"dist/android through LiteRT-LM's own benchmark: {s['runtime']}, {s['repeats']} rounds "
                          f"alternating with our loop on the same .tflite ({s.get('prefill_tokens', '?')}-token "
                          f"prompt, {s.get('decode_tokens', '?')} decode steps; medians). Host figures, not a "
                          "phone."]),
                   ("table", ["LiteRT-LM", "student", "teacher", "ratio"], rows)]
    elif lm.get("reason"):
        blocks.append(("p", [f"dist/android: LiteRT-LM's benchmark not run ({lm['reason']})."]))
    checks = (manifest.get("litertlm") or {}).get("checked_in_litertlm") or {}
    rows = [[variant, p["kind"], f"{p['tokens_matching']}/{p['reference_tokens']}", "yes" if p["text_equal"] else "no",
             _divergence_text(p.get("divergence"))] for variant, c in checks.items() for p in c["prompts"]]
    if rows:
        runtime = next(iter(checks.values()))["runtime"]
        blocks += [("p", [f"Greedy tokens generated by {runtime} against the fp32 PyTorch student."]),
                   ("table", ["variant", "prompt", "tokens equal", "text equal", "first difference"], rows)]
    return blocks + emulated_blocks(manifest.get("emulated_arm64"))


def emulated_blocks(record: dict | None) -> list[tuple]:
    """`bench --emulator`: the shipped .tflite on emulated ARM64 beside this host, each against the fp32 PyTorch
    student; speeds labelled as emulated."""
    if not record:
        return []
    where = [w for w in record if isinstance(record[w], dict) and "top1_agreement" in record[w]]
    where.sort(key=lambda w: w != "arm64")

    def speed(r, role):
        v = r["decode_tokens_per_s"].get(role)
        return "-" if v is None else f"{v:.1f}"

    rows = [[w if w == "arm64" else f"{w} (this host)", f"{r['top1_agreement']:.4f}", f"{r['kl_mean']:.2e}",
             f"{r['greedy_tokens_matching']}/{r['greedy_tokens']}", speed(r, "student"), speed(r, "teacher"),
             "-" if r.get("speedup_vs_teacher") is None else f"{r['speedup_vs_teacher']:.2f}x",
             "ran" if r["litertlm"].get("ran") else "failed"]
            for w in where for r in [record[w]]]
    return [("p", [f"dist/android on {record['label']}: {record['model']} through {record['binding']}, against the "
                   f"{record['reference']}; top-1 gap {record['top1_gap']:.4f}. The ARM64 speeds are QEMU's."]),
            ("table", ["CPU", "top-1", "KL", "greedy tokens", "student tok/s", "teacher tok/s", "speedup",
                       "LiteRT-LM"], rows)]


def _divergence_text(d: dict | None) -> str:
    if not d:
        return "-"
    if d.get("logit_gap") is None:
        return f"token {d['position']}"
    return f"token {d['position']}, {d['logit_gap']:.3g} logits apart" + (" (a near-tie)" if d["near_tie"] else "")


TARGET = Target(stages=stages, bench=bench, verify=verify, check=check, artifacts=artifacts, figures=figures,
                report_blocks=report_blocks, device_bench=True)
