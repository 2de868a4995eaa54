"""The report: a run folder's records -> report.html (one file, plots inline) and summary.md.

It reads what the stages wrote and measures nothing itself. A figure missing from the records is shown as
missing, with the stage that would have written it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from edgedistil.errors import EdgeError, atomic_file
from edgedistil.targets import every_target, target_of


def _read(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def collect(run: Path) -> dict:
    """Everything the report shows, from the run folder's records."""
    run = Path(run)
    if not run.is_dir():
        raise EdgeError(f"run folder {run} does not exist", "pass the --out folder of a build or distill run")
    curve_path = run / "distill" / "train.jsonl"
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.is_file() else []
    data = {
        "distill": _read(run / "distill" / "record.json"),
        "curve": curve,
        "exports": {p.parent.name: _read(p) for p in sorted((run / "export").glob("*/record.json"))},
        "quantized": {p.parent.name: _read(p) for p in sorted((run / "quantize").glob("*/record.json"))},
        "bench": _read(run / "bench" / "record.json"),
        "eval": _read(run / "eval" / "record.json"),
        # what each target's own stages left here (its module says where and how to read it)
        "artifacts": [row for target in every_target() for row in target.artifacts(run)],
        "bundles": {p.parent.name: _read(p) for p in sorted((run / "dist").glob("*/manifest.json"))},
        "check": _read(run / "check.json"),
    }
    if not data["distill"] and not data["bundles"]:
        raise EdgeError(f"{run} holds no distill record and no bundle", "run `edgedistil build` into it first")
    return data


def variants(data: dict) -> list[dict]:
    """Every artifact with a size, and its speed and fidelity where measured: the points of the Pareto chart."""
    rows = []
    bench = data["bench"] or {}
    for role, rec in data["exports"].items():
        if rec:
            b = bench.get(role) if role == "teacher" else None
            rows.append({"name": f"{role} fp32 (ONNX)", "mb": rec["bytes"] / 1e6, "fidelity": rec["fidelity"],
                         "decode": b["decode_tokens_per_s"] if b else None})
    for method, rec in data["quantized"].items():
        if rec:
            b = bench.get("student") if bench.get("student", {}).get("sha256") == rec["sha256"] else None
            rows.append({"name": f"student {method} (ONNX)", "mb": rec["bytes"] / 1e6, "fidelity": rec["fidelity"],
                         "decode": b["decode_tokens_per_s"] if b else None})
    rows += data.get("artifacts", [])
    for target, m in data["bundles"].items():
        if m:
            b = m.get("bench") or {}
            rows.append({"name": f"dist/{target}", "mb": sum(f["bytes"] for f in m["files"]) / 1e6,
                         "fidelity": m.get("fidelity"), "decode": b.get("decode_tokens_per_s")})
    return rows


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(data: dict) -> dict[str, str]:
    """Title -> base64 PNG, for the figures whose records exist."""
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    out = {}
    if data["curve"]:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        steps = [r["step"] for r in data["curve"]]
        for key, label in (("loss", "total loss"), ("kl", "soft: KL(teacher || student) at T"),
                           ("ce", "hard: CE on labels")):
            ax.plot(steps, [r[key] for r in data["curve"]], label=label)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("Distillation loss")
        out["Distillation loss"] = _png(fig)
        plt.close(fig)

    bench, q = data["bench"] or {}, (data["distill"] or {}).get("quality")
    if bench.get("student") and bench.get("teacher"):
        s, t = bench["student"], bench["teacher"]
        panels = [("size (MB)", s["bytes"] / 1e6, t["bytes"] / 1e6),
                  ("decode tok/s", s["decode_tokens_per_s"], t["decode_tokens_per_s"]),
                  ("prefill tok/s", s["prefill_tokens_per_s"], t["prefill_tokens_per_s"]),
                  ("peak memory (MB)", s["peak_memory_mb"], t["peak_memory_mb"])]
        if q:
            panels.append(("held-out perplexity", q["student_perplexity"], q["teacher_perplexity"]))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 3))
        for ax, (title, sv, tv) in zip(axes, panels):
            ax.bar(["student", "teacher"], [sv, tv], color=["#2a9d8f", "#8d99ae"])
            ax.set_title(title, fontsize=9)
        fig.suptitle("Student vs teacher (same runtime)", y=1.04)
        out["Student vs teacher"] = _png(fig)
        plt.close(fig)

    points = {}  # a bundle and the artifact inside it are one point with two names
    for v in variants(data):
        if v["decode"]:
            points.setdefault((round(v["mb"]), v["decode"]), []).append(v)
    if points:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        xs, ys = [k[0] for k in points], [k[1] for k in points]
        mid_x, mid_y = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        for group in points.values():
            v, top1 = group[0], (group[0]["fidelity"] or {}).get("top1_agreement")
            ax.scatter(v["mb"], v["decode"], s=60)
            # each label points into the plot, so none runs over the title or out of the axes
            right, top = v["mb"] > mid_x, v["decode"] > mid_y
            ax.annotate(" = ".join(g["name"] for g in group) + (f"\ntop-1 {top1:.3f}" if top1 is not None else ""),
                        (v["mb"], v["decode"]), fontsize=8, textcoords="offset points",
                        xytext=(-6 if right else 6, -6 if top else 6), ha="right" if right else "left",
                        va="top" if top else "bottom")
        ax.margins(x=0.08, y=0.15)
        points = [g[0] for g in points.values()]
        front = pareto([(v["mb"], v["decode"]) for v in points])
        ax.plot(*zip(*front), "--", color="grey", label="Pareto front (smaller and faster)")
        ax.set_xlabel("size (MB)")
        ax.set_ylabel("decode tok/s")
        ax.legend(fontsize=8, loc="best")
        ax.set_title("Size vs speed")
        out["Size vs speed"] = _png(fig)
        plt.close(fig)

    fid = [v for v in variants(data) if v["fidelity"]]
    if fid:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
        names = [v["name"] for v in fid]
        a1.barh(names, [v["fidelity"]["top1_agreement"] for v in fid], color="#2a9d8f")
        a1.set_title("top-1 agreement with its PyTorch source", fontsize=9)
        a1.set_xlim(0, 1)
        a2.barh(names, [max(v["fidelity"]["kl_mean"], 1e-9) for v in fid], color="#e76f51")
        a2.set_xscale("log")
        a2.set_title("mean KL(source || artifact)", fontsize=9)
        a2.set_yticks([])
        out["Fidelity per artifact"] = _png(fig)
        plt.close(fig)
    return out


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by one both smaller and faster, sorted by size."""
    front, best = [], float("-inf")
    for mb, speed in sorted(points, key=lambda p: (p[0], -p[1])):
        if speed > best:
            front.append((mb, speed))
            best = speed
    return front


def summary(data: dict) -> list[tuple]:
    """The summary as blocks, ("p", lines) or ("table", head, rows), so Markdown and HTML say the same."""
    blocks = []
    d = data["distill"]
    if d:
        q = d["quality"]
        blocks += [("p", [f"Student: {d['student']['layers']} layers (teacher layers {d['student']['teacher_layers']}), "
                          f"{d['student']['parameters'] / 1e6:.1f}M parameters vs teacher "
                          f"{d['teacher_parameters'] / 1e6:.1f}M."]),
                   ("table", ["held-out", "student", "teacher"], [
                       ["perplexity", f"{q['student_perplexity']:.2f}", f"{q['teacher_perplexity']:.2f}"],
                       ["top-1 agreement with teacher", f"{q['top1_agreement_with_teacher']:.3f}", "1"],
                       ["quality retained", f"{q['quality_retained']:.3f}", "1"]])]
    blocks += evaluation_blocks(data.get("eval"))
    speed = (("decode_tokens_per_s", "decode tok/s"), ("prefill_tokens_per_s", "prefill tok/s"),
             ("ttft_ms", "TTFT ms"), ("peak_memory_mb", "peak memory MB"))
    b = data["bench"]
    if b and b.get("student") and b.get("teacher"):
        blocks += [("p", [f"Runtime: {b['runtime']}, {b['repeats']} repeats (medians)."]),
                   ("table", ["", "student", "teacher", "ratio"], [
                       [label, f"{b['student'][k]:.1f}", f"{b['teacher'][k]:.1f}",
                        f"{b['student'][k] / b['teacher'][k]:.2f}x"] for k, label in speed])]
    for target, m in data["bundles"].items():
        b, t = (m or {}).get("bench") or {}, (m or {}).get("teacher_bench") or {}
        if b.get("decode_tokens_per_s") and t.get("decode_tokens_per_s"):
            blocks += [("p", [f"dist/{target} on its target runtime: {b.get('runtime')}."]),
                       ("table", ["", "student", "teacher", "ratio"], [
                           [label, f"{b[k]:.1f}", f"{t[k]:.1f}", f"{b[k] / t[k]:.2f}x"] for k, label in speed
                           if b.get(k) and t.get(k)])]
            by_threads = m.get("bench_threads") or {}  # android: every thread count measured
            if by_threads:
                blocks.append(("p", [f"{role} decode tok/s by threads: " + ", ".join(
                    f"{n}: {r['decode_tokens_per_s']:.1f}" for n, r in sorted(figures.items(), key=lambda x: int(x[0])))
                    for role, figures in by_threads.items()]))
        elif m and isinstance(m.get("bench"), dict) and m["bench"].get("reason"):
            blocks.append(("p", [f"dist/{target}: speed not measured here ({m['bench']['reason']})."]))
        if m and m.get("target"):
            blocks += target_of(m["target"]).report_blocks(m)
    rows = variants(data)
    if rows:
        table = []
        for v in rows:
            f = v["fidelity"] or {}
            top1, kl = f.get("top1_agreement"), f.get("kl_mean")
            table.append([v["name"], f"{v['mb']:.1f}", "-" if top1 is None else f"{top1:.3f}",
                          "-" if kl is None else f"{kl:.2e}"])
        blocks.append(("table", ["artifact", "MB", "top-1 vs source", "KL vs source"], table))
    if data["check"]:
        c = data["check"]
        skipped = [r for r in c.get("budgets", []) if r["status"] == "skip"]
        blocks.append(("p", [f"Budget check: {'passed' if c['passed'] else 'FAILED'}." + (
            f" Not applied ({skipped[0]['note']}): {', '.join(r['budget'] for r in skipped)}." if skipped else "")]))
        if c.get("estimate"):  # the target profile's named device: a projection, labelled as one
            from edgedistil.check.budgets import estimate_line

            manifest = data["bundles"].get(Path(c["bundle"]).name) or {}
            blocks.append(("p", [f"Projected on a named device: {estimate_line(manifest, c['estimate'])}."]))
    return blocks


def evaluation_blocks(ev: dict | None) -> list[tuple]:
    """The eval stage: each benchmark beside the teacher (accuracy, ratio, margin above chance kept), and the
    chat behaviour figures."""
    if not ev:
        return []

    def pct(x):
        return "-" if x is None else f"{x:.1f}"

    def share(x):
        return "-" if x is None else f"{100 * x:.0f}%"

    rows = []
    for name, r in ev["benchmarks"].items():
        if name == "mean":
            continue
        m = r["metric"]
        rows.append([f"{name} ({m}, {r['n']} items, chance {r['chance']})", pct(r.get("student", {}).get(m)),
                     pct(r.get("teacher", {}).get(m)), f"{(r.get('ratio') or {}).get(m) or 0:.2f}",
                     share((r.get("margin_kept") or {}).get(m))])
    mean = ev["benchmarks"]["mean"]
    rows.append(["mean", pct(mean.get("student")), pct(mean.get("teacher")), f"{mean.get('ratio') or 0:.2f}",
                 share(mean.get("margin_kept"))])
    rows.append(["pooled (summed margins)", "", "", "", share(mean.get("margin_kept_pooled"))])
    b = ev["behaviour"]
    s, t = b.get("student") or {}, b.get("teacher") or {}
    beh = [["degenerate answers", share(s.get("degenerate")), share(t.get("degenerate"))],
           ["answers ending with end of turn", share(s.get("ends_with_end_of_turn")),
            share(t.get("ends_with_end_of_turn"))],
           ["ROUGE-L vs the teacher's answer", "-" if b.get("rouge_l_vs_teacher") is None
            else f"{b['rouge_l_vs_teacher']:.3f}", "1"]]
    return [("p", [f"Zero-shot benchmarks ({ev['subset']} subset; {ev['protocol']})."]),
            ("table", ["benchmark", "student", "teacher", "ratio", "teacher's margin kept"], rows),
            ("p", [f"Chat behaviour: {b['prompts']} prompts no training sees, greedy, {b['new_tokens']} tokens"
                   f"{', through the chat template' if b.get('chat_template') else ''}."]),
            ("table", ["", "student", "teacher"], beh)]


def summary_markdown(data: dict) -> str:
    lines = ["# edgedistil report", ""]
    for block in summary(data):
        if block[0] == "p":
            lines += block[1]
        else:
            head, rows = block[1], block[2]
            lines += ["|" + "|".join(f" {h} " if h else " " for h in head) + "|", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


def summary_html(data: dict) -> str:
    out = []
    for block in summary(data):
        if block[0] == "p":
            out.append("<p>" + "<br>".join(html.escape(line) for line in block[1]) + "</p>")
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            # figures right-aligned so their digits line up; the first column names the row
            body = "".join("<tr>" + "".join(f"<td{'' if i == 0 else ' class=num'}>{html.escape(c)}</td>"
                                            for i, c in enumerate(row)) + "</tr>" for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(out)


def run_report(run: Path, out_dir: Path, log=print) -> Path:
    data = collect(run)
    images = plots(data)
    md = summary_markdown(data)
    body = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b64}'>"
                   for t, b64 in images.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgedistil report: {html.escape(str(run))}"
            "</title><style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em}"
            "img{max-width:100%}table{border-collapse:collapse;margin:0.5em 0 1em}"
            "th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left}th{background:#f4f4f4}"
            "td.num{text-align:right;font-variant-numeric:tabular-nums}</style></head><body>"
            f"<h1>edgedistil report</h1><p>Run folder: <code>{html.escape(str(run))}</code></p>"
            f"<h2>Summary</h2>{summary_html(data)}{body}</body></html>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.html", page), ("summary.md", md)):  # files, not the folder: --out may hold others
        with atomic_file(out_dir / name) as tmp:
            tmp.write_text(text)
    log(f"report: {out_dir / 'report.html'} ({len(images)} plots), {out_dir / 'summary.md'}")
    return out_dir / "report.html"
