"""The report, read as a user would: rendered in headless Chromium with its plots present."""

from conftest import edgedistil

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_report_renders_with_its_plots(tiny_run, tmp_path):
    from playwright.sync_api import sync_playwright

    proc = edgedistil("report", tiny_run[0], "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "| perplexity |" in summary and "| decode tok/s |" in summary and "Budget check: passed" in summary
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 1400})
        page.goto((tmp_path / "report.html").as_uri())
        images = page.evaluate("[...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    titles = {alt for alt, w, h in images if w > 100 and h > 100}
    assert {"Distillation loss", "Student vs teacher", "Size vs speed", "Fidelity per artifact"} <= titles
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_report_on_an_empty_folder_says_what_to_do(tmp_path):
    proc = edgedistil("report", tmp_path)
    assert proc.returncode == 2 and "holds no distill record and no bundle" in proc.stderr


def test_summary_labels_the_device_projection_as_an_estimate():
    from edgedistil.report.html import summary_markdown

    manifest = {"files": [{"path": "model.tflite", "bytes": 50_000_000}],
                "bench": {"decode_tokens_per_s": 180.0, "runtime": "host LiteRT"}}
    estimate = {"device": "Phone X", "decode_tokens_per_s": 400.0, "label": "estimate (...), not a measurement",
                "bandwidth_gbs": 20.0, "bandwidth_basis": "measured", "weight_bytes": 50_000_000,
                "weights_share_of_ram": 0.01, "ram_gb": 8.0}
    data = {"distill": None, "bench": None, "exports": {}, "quantized": {}, "bundles": {"android": manifest},
            "check": {"bundle": "run/dist/android", "passed": True, "budgets": [], "estimate": estimate}}
    md = summary_markdown(data)
    assert "Phone X: 400 tok/s decode, estimate" in md and "measured: 180 tok/s on host LiteRT" in md
