"""Time `edgedistil build` end to end and collect what it measured, as JSON.

    python scripts/bench_build.py                       # the embedded default, web, from a cold cache
    python scripts/bench_build.py --config models/tiny.toml --warm-cache
    python scripts/bench_build.py --target android --from-run RUN   # collect a finished `build --out RUN`

Writes docs/results/build_<recipe>_<target>.json (or --json PATH): wall time, each stage's time, the machine,
and the bundle's size, fidelity, bench and quality figures. The README quotes these files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="web")
    ap.add_argument("--config", default=None, help="recipe TOML (default: the built-in default)")
    ap.add_argument("--warm-cache", action="store_true",
                    help="reuse the user's teacher/corpus cache instead of a fresh one (skips download + conversion)")
    ap.add_argument("--json", default=None, help="output path")
    ap.add_argument("--from-run", default=None, metavar="RUN",
                    help="do not build: collect what `edgedistil build --target T --out RUN` recorded (wall time = "
                         "the sum of the stages it ran)")
    ap.add_argument("--wall", type=float, default=None, metavar="SECONDS",
                    help="with --from-run: the build command's own wall time (e.g. from `time`), first-use work "
                         "outside the stages included; without it, the sum of the stages")
    ap.add_argument("--cold", action="store_true",
                    help="with --from-run: the build ran on an empty edgedistil cache (a new machine)")
    args = ap.parse_args()

    recipe = Path(args.config).stem if args.config else "default"
    dest = Path(args.json) if args.json else REPO / "docs" / "results" / f"build_{recipe}_{args.target}.json"
    if args.from_run:
        out = Path(args.from_run)
        stages = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((out / "stages").glob("*.json"))}
        manifest = json.loads((out / "dist" / args.target / "manifest.json").read_text())
        check = json.loads((out / "check.json").read_text())
        log = (out / "build.log").read_text().splitlines()
        starts = [i for i, line in enumerate(log) if line.startswith("edgedistil ") and " build --target " in line]
        last = log[starts[-1]:] if starts else log  # build.log appends: the last build's lines
        ran = [line[1:-len("] running")].replace("[", "-").replace("]", "") for line in last
               if line.startswith("[") and line.endswith("] running")]
        stages = {name: stages[name] for name in ran if name in stages}
        # the build's own exit code is not kept; a failed budget is what made it 1
        wall, cmd, code = args.wall or sum(stages.values()), None, 0 if check.get("passed") else 1
        host = out / "bench-android" / "record.json"  # every thread count with its Python-glue breakdown
        if args.target == "android" and host.is_file():
            manifest = {**manifest, "bench_android_record": json.loads(host.read_text())}
    else:
        out, wall, cmd, code, stages, manifest, check = build_once(args)
    command = (" ".join(["edgedistil", *cmd[3:]]).replace(str(out), "RUN") if cmd else
               f"edgedistil build --target {args.target} --out RUN; python scripts/bench_build.py --target "
               f"{args.target} --from-run RUN")
    write_result(args, dest, command, wall, stages, code, manifest, check)


def build_once(args):
    with tempfile.TemporaryDirectory(prefix="edgedistil-bench-") as tmp:
        env = dict(os.environ)
        if not args.warm_cache:
            env["EDGEDISTIL_CACHE"] = str(Path(tmp) / "cache")
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "edgedistil.cli", "build", "--target", args.target, "--out", str(out)]
        if args.config:
            cmd += ["--config", args.config]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):  # 1 = built, but a budget failed: still worth recording
            sys.exit(f"build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        stages = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((out / "stages").glob("*.json"))}
        manifest = json.loads((out / "dist" / args.target / "manifest.json").read_text())
        check = json.loads((out / "check.json").read_text())
    return out, wall, cmd, proc.returncode, stages, manifest, check


def write_result(args, dest, command, wall, stages, code, manifest, check):
    result = {
        "command": command,
        "cold_cache": args.cold if args.from_run else not args.warm_cache,
        "wall_seconds": round(wall, 1),
        "stage_seconds": stages,
        "exit_code": code,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "bundle_bytes": sum(f["bytes"] for f in manifest["files"]),
        "fidelity": manifest["fidelity"],
        "bench": manifest["bench"],
        "teacher_bench": manifest["teacher_bench"],
        **({"bench_threads": manifest["bench_threads"]} if "bench_threads" in manifest else {}),
        **({"bench_android_record": manifest["bench_android_record"]} if "bench_android_record" in manifest else {}),
        **({"quantization_variants": manifest["quantization"]["variants"]}
           if "variants" in manifest.get("quantization", {}) else {}),
        "speedup_vs_teacher": manifest["speedup_vs_teacher"],
        **{k: manifest[k] for k in ("transformersjs_bench", "genai_bench") if k in manifest},
        "quality": manifest["quality"],
        "student": manifest["student"],
        "check_passed": check["passed"],
        "date": time.strftime("%Y-%m-%d"),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_seconds", "stage_seconds", "speedup_vs_teacher")}, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
