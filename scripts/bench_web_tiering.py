"""Why a web bundle's decode speed in Chromium varies from page to page: V8's two wasm tiers.

V8 first runs wasm in its baseline compiler (Liftoff) and recompiles hot functions with TurboFan in the
background. Whether onnxruntime-web's kernels have tiered up by the time a bench times them is chance, so one
bundle's decode speed moves from page to page. This script opens each bundle in fresh headless Chromium pages,
alternating V8's default tiering with `--js-flags=--no-liftoff` (TurboFan up front, what `edgedistil bench --target
web` times with the default tiers), and records every timed generation and the untimed first one.

    python scripts/bench_web_tiering.py greedy=RUN_A/dist/web block_influence=RUN_B/dist/web --rounds 4

With two bundles it also gives the second's decode speed over the first's per tier (the medians of all timed
generations), which is how the two layer rankings' bundles were compared (docs/benchmarks.md).

Run it on idle cores. Writes docs/results/bench_web_tiering.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIERS = {"default (Liftoff, then TurboFan)": [], "TurboFan up front (--no-liftoff)": ["--js-flags=--no-liftoff"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", help="dist/web folders, each optionally labelled: LABEL=FOLDER")
    ap.add_argument("--rounds", type=int, default=3, help="fresh pages per bundle and tier")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed generations per page, after one untimed")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_web_tiering.json"))
    args = ap.parse_args()

    from edgedistil.bench import web
    from edgedistil.check.budgets import load_bundle_manifest
    from edgedistil.errors import EdgeError
    from edgedistil.records import sha256_file

    bundles = dict(b.split("=", 1) if "=" in b else (b, b) for b in args.bundles)
    try:  # every bundle is checked before any browser starts
        files = {label: {"folder": b,
                         "sha256": sha256_file(Path(b) / load_bundle_manifest(Path(b))["graphs"][0]["file"])}
                 for label, b in bundles.items()}
    except EdgeError as e:
        raise SystemExit(str(e))
    base_args = [a for a in web.CHROMIUM_ARGS if not a.startswith("--js-flags")]
    chromium = web.chromium_path()
    prompt = list(range(1000, 1064))  # 64 tokens, the prefill chunk of the default recipe
    sync_playwright = web._import_playwright()
    pages = []
    load_before = os.getloadavg()[0]
    with sync_playwright() as pw:
        for round_ in range(1, args.rounds + 1):
            for label, bundle in bundles.items():
                with web.serve(Path(bundle)) as base:
                    for tier, flags in TIERS.items():
                        raw = web.run_page(pw, base + "index.html?threads=1", prompt, args.new_tokens, args.repeats,
                                           chromium, args=base_args + flags, warmups=1)
                        row = {"round": round_, "bundle": label, "tier": tier, "load_ms": round(raw["loadMs"], 1),
                               "first_decode_tokens_per_s": round(raw["warmup"]["decode_tokens_per_s"], 1),
                               "decode_tokens_per_s": [round(r["decode_tokens_per_s"], 1) for r in raw["runs"]],
                               "ttft_ms": [round(r["ttft_ms"], 1) for r in raw["runs"]]}
                        pages.append(row)
                        print(json.dumps(row), flush=True)
    summary = []
    for bundle in bundles:
        for tier in TIERS:
            timed = [v for p in pages if p["bundle"] == bundle and p["tier"] == tier for v in p["decode_tokens_per_s"]]
            page_medians = [statistics.median(p["decode_tokens_per_s"]) for p in pages
                            if p["bundle"] == bundle and p["tier"] == tier]
            summary.append({"bundle": bundle, "tier": tier, "timed_median": statistics.median(timed),
                            "timed_min": min(timed), "timed_max": max(timed),
                            "page_median_min": min(page_medians), "page_median_max": max(page_medians)})
    if len(bundles) == 2:
        first, second = bundles
        for tier in TIERS:
            a, b = (next(r["timed_median"] for r in summary if r["bundle"] == x and r["tier"] == tier)
                    for x in (first, second))
            summary.append({"tier": tier, f"{second}_over_{first}": round(b / a, 3)})
    record = {"command": "python scripts/bench_web_tiering.py " + " ".join(args.bundles) + f" --rounds {args.rounds}",
              "what": __doc__.split("\n\n")[0], "browser": f"Chromium {web.chromium_version(chromium)} (headless)",
              "chromium_args": base_args, "threads": 1, "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
              "repeats": args.repeats, "cpu_count": os.cpu_count(), "loadavg_1m_before": round(load_before, 2),
              "loadavg_1m_after": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d"),
              "bundles": files,
              "summary": summary, "pages": pages}
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
