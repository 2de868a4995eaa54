"""The check stage: a bundle's measured figures against budgets -> a pass/fail table; any failure fails CI.

A budget on a figure that was not measured fails too: a gate that passes on missing data is no gate. A budget
whose limit lies inside the measured spread over repeats is "within noise": `noise_passes` decides its fate.
Against a baseline bundle, each figure may also not regress by more than a set percentage.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgedistil.config import BUDGETS
from edgedistil.errors import EdgeError, read_json
from edgedistil.targets import manifest_figures, target_of


def bundle_metrics(manifest: dict, estimate: dict | None = None) -> dict[str, tuple[float | None, list | None]]:
    """The figures budgets can gate, each as (value, spread over repeats or None), as the bundle's target module
    reads them from its manifest; `estimate` is a device projection (check/devices.py), the only source of the
    projected figure."""
    figures = target_of(manifest["target"]).figures if "target" in manifest else manifest_figures
    return {**figures(manifest), "projected_decode_tokens_per_s": ((estimate or {}).get("decode_tokens_per_s"), None)}


def evaluate(manifest: dict, budgets: dict[str, float], noise_passes: bool = False, estimate: dict | None = None,
             skip: list[str] = (), skip_note: str = "") -> list[dict]:
    """One row per budget; those in `skip` do not apply to this model and are shown, measured, as "skip"."""
    metrics = bundle_metrics(manifest, estimate)
    rows = []
    for name, limit in budgets.items():
        direction, unit = BUDGETS[name]
        metric = name.rsplit("_", 1)[0]
        value, spread = metrics.get(metric, (None, None))  # a figure this target never measures: not measured
        projected = metric.startswith("projected_")
        if name in skip:
            rows.append({"budget": name, "metric": metric, "measured": value, "spread": spread, "limit": limit,
                         "margin": None, "unit": unit, "status": "skip", "note": skip_note})
            continue
        if value is None:
            note = ("no device profile: name one with --device or the target profile's device" if projected
                    else "not measured")
            rows.append({"budget": name, "metric": metric, "measured": None, "spread": None, "limit": limit,
                         "margin": None, "unit": unit, "status": "fail", "note": note})
            continue
        margin = value - limit if direction == "min" else limit - value
        status, note = ("pass" if margin >= 0 else "fail"), (f"estimate for {estimate['device']}" if projected else "")
        if spread and spread[0] <= limit <= spread[1]:
            status = "pass" if noise_passes else "fail"
            note = "within noise"
        rows.append({"budget": name, "metric": metric, "measured": value, "spread": spread, "limit": limit,
                     "margin": margin, "unit": unit, "status": status, "note": note})
    return rows


def passed(rows: list[dict]) -> bool:
    """No row failed (a skipped budget does not apply, so it does not fail the check)."""
    return all(r["status"] != "fail" for r in rows)


def compare_baseline(manifest: dict, baseline: dict, max_regression_pct: float) -> list[dict]:
    """Each gateable figure against the same figure of a previous bundle; worse by more than the percentage fails.

    "Worse" follows the budget direction: lower is worse for *_min figures, higher for *_max figures.
    """
    now, before = bundle_metrics(manifest), bundle_metrics(baseline)
    rows = []
    for name, (direction, unit) in BUDGETS.items():
        metric = name.rsplit("_", 1)[0]
        value, old = now.get(metric, (None,))[0], before.get(metric, (None,))[0]
        if value is None or old is None or old == 0:
            continue  # a figure measured in only one of the two bundles cannot regress
        change = 100.0 * (value - old) / abs(old)
        worse = -change if direction == "min" else change
        rows.append({"budget": f"{metric} vs baseline", "metric": metric, "measured": value, "spread": None,
                     "limit": old, "margin": -worse, "unit": unit,
                     "status": "fail" if worse > max_regression_pct else "pass",
                     "note": f"{change:+.1f}% (allowed {max_regression_pct:g}% worse)"})
    return rows


def load_bundle_manifest(bundle: Path) -> dict:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise EdgeError(f"bundle {bundle} does not exist", "build it first with `edgedistil build --target T`")
    return read_json(bundle / "manifest.json", "bundle manifest")


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return f"{x:.4g}"


def estimate_line(manifest: dict, estimate: dict) -> str:
    """The projection beside the bundle's measured decode speed, labelled as the estimate it is."""
    bench = manifest.get("bench") or {}
    measured = bench.get("decode_tokens_per_s")
    beside = f"; measured: {measured:.4g} tok/s on {bench.get('runtime', 'this host')}" if measured else ""
    return (f"{estimate['device']}: {estimate['decode_tokens_per_s']:.4g} tok/s decode, {estimate['label']} "
            f"({estimate['bandwidth_gbs']:g} GB/s, {estimate['bandwidth_basis']}; weights "
            f"{estimate['weight_bytes'] / 1e6:.1f} MB = {estimate['weights_share_of_ram']:.1%} of its "
            f"{estimate['ram_gb']:g} GB RAM){beside}")


def render(rows: list[dict], fmt: str, manifest: dict | None = None, estimate: dict | None = None) -> str:
    if fmt == "json":
        return json.dumps({"passed": passed(rows), "budgets": rows,
                           "estimate": estimate}, indent=2)
    head = ["budget", "measured", "spread", "limit", "margin", "status"]
    body = [[r["budget"], _fmt(r["measured"]) + (f" {r['unit']}" if r["unit"] and r["measured"] is not None else ""),
             _fmt(r["spread"]), _fmt(r["limit"]), _fmt(r["margin"]),
             r["status"].upper() + (f" ({r['note']})" if r["note"] else "")] for r in rows]
    after = f"\n\n{estimate_line(manifest or {}, estimate)}" if estimate else ""
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + after
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [head, *body]) + after
