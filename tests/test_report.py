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
