"""The web bundle in a real browser: headless Chromium runs the bundle's own page and JS module (onnxruntime-web),
and its greedy token ids must equal Python onnxruntime's for the same model file and prompt."""

import json
import os
import re
import socket
import tempfile

import pytest

from conftest import TINY, WEB_RUNTIME_ENV, edgedistil
from edgedistil.bench.web import CHROMIUM_ARGS, chromium_path, reference_ids, serve
from edgedistil.errors import EdgeError

SHIPPED = "onnx/model_quantized.onnx"
VENDOR = {"vendor/ort.wasm.bundle.min.mjs", "vendor/ort-wasm-simd-threaded.wasm", "vendor/tokenizers.min.mjs"}


def bundle_of(tiny_run):
    return tiny_run[0] / "dist" / "web"


def test_bundle_ships_the_pinned_runtime_and_verifies(tiny_run):
    bundle = bundle_of(tiny_run)
    manifest = json.loads((bundle / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert VENDOR | {"edgedistil-web.js", "index.html", "USAGE.md", SHIPPED, "tokenizer.json"} <= paths
    # one graph: our module runs the layout's own q8 file, the one Transformers.js loads
    assert [p for p in paths if p.endswith(".onnx")] == [SHIPPED]
    assert {g["file"] for g in manifest["graphs"]} == {SHIPPED} and "edgedistil-web.js" in manifest["runtime"]["demo_uses"]
    assert manifest["runtime"]["name"] == "onnxruntime-web" and manifest["runtime"]["version"] == "1.30.0"
    for page in ("index.html", "edgedistil-web.js"):  # everything loads from the bundle, nothing from a CDN
        text = (bundle / page).read_text()
        imports = re.findall(r'(?:from|import\()\s*"([^"]+)"', text)
        assert imports and all(spec.startswith("./") and (bundle / spec).is_file() for spec in imports), imports
        assert "http://" not in text and "https://" not in text
    usage = (bundle / "USAGE.md").read_text()
    assert "Cross-Origin-Embedder-Policy: require-corp" in usage and "generate(" in usage
    assert "repetitionPenalty: 1.2" in usage and "end-of-turn" in usage  # the option, and the runtimes' trap
    assert f"`{manifest['quantization']['method']}` ({manifest['quantization']['scheme']})" in usage
    proc = edgedistil("verify", bundle)
    assert proc.returncode == 0, proc.stderr


def test_build_ran_the_bundle_in_chromium_with_the_python_reference_ids(tiny_run):
    out = tiny_run[0]
    manifest = json.loads((out / "dist" / "web" / "manifest.json").read_text())
    record = json.loads((out / "bench-web" / "record.json").read_text())
    student = record["student"]
    assert "onnxruntime-web 1.30.0 wasm" in manifest["bench"]["runtime"] and "Chromium" in manifest["bench"]["runtime"]
    assert manifest["bench"]["decode_tokens_per_s"] == student["decode_tokens_per_s"] > 0
    assert manifest["bench_native"]["runtime"].startswith("onnxruntime ") and manifest["teacher_bench_native"]
    assert record["cross_origin_isolated"] is True and record["wasm_simd"] is True
    assert student["renderer_peak_rss_mb"] > 50 and student["js_heap_used_mb"] > 0
    # an independent reference: the same file and prompt through Python onnxruntime here
    ref = reference_ids(out / "dist" / "web" / SHIPPED, _bench_prompt(out), len(student["ids"]),
                        manifest["graphs"][0]["tokens_per_call"])
    assert student["ids"] == ref == student["reference_ids"]
    assert student["streamed_equals_returned"] and student["ids_same_every_run"]
    assert manifest["fidelity"]["browser"]["ids_equal"] is True
    assert record["teacher"]["ids_equal"] is True and manifest["teacher_bench"]["runtime"] == student["runtime"]


def test_build_times_transformersjs_on_the_shipped_file_beside_our_page(tiny_run, tmp_path):
    """Issue 20: Transformers.js runs the bundle's q8 file in the same browser, its greedy ids equal our page's, and
    the manifest, the report and `check` carry our decode speed over its."""
    out = tiny_run[0]
    bundle = out / "dist" / "web"
    manifest = json.loads((bundle / "manifest.json").read_text())
    tjs, ours = manifest["transformersjs_bench"], manifest["bench"]
    assert tjs["runtime"].startswith("Transformers.js ") and tjs["file"] == SHIPPED and tjs["ids_equal_to_ours"]
    assert tjs["decode_tokens_per_s"] > 0 and tjs["ttft_ms"] > 0 and tjs["renderer_peak_rss_mb"] > 50
    assert tjs["decode_ours_over_transformersjs"] == round(ours["decode_tokens_per_s"] / tjs["decode_tokens_per_s"], 3)
    report = edgedistil("report", out, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "report" / "report.html").read_text()
    assert tjs["runtime"] in html and f"{tjs['decode_ours_over_transformersjs']:.2f}x" in html
    budgets = tmp_path / "tjs.toml"
    budgets.write_text("[budgets]\ndecode_vs_transformersjs_min = 1e9\n")
    bad = edgedistil("check", bundle, "--budgets", budgets, "--format", "json")
    row = json.loads(bad.stdout)["budgets"][0]
    assert bad.returncode == 1 and row["measured"] == tjs["decode_ours_over_transformersjs"] and row["status"] == "fail"


def _bench_prompt(out):
    from edgedistil.build import Run, bench_prompt
    from edgedistil.config import load_recipe

    return bench_prompt(Run(out=out, recipe=load_recipe(TINY)))


def test_demo_page_generates_text_and_the_tokenizer_matches_python(tiny_run, tmp_path):
    from playwright.sync_api import sync_playwright
    from tokenizers import Tokenizer

    bundle = bundle_of(tiny_run)
    prompt = "The quick brown fox"
    with serve(bundle) as base, sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=str(chromium_path()), headless=True,
                                                    args=CHROMIUM_ARGS)
        try:
            page = ctx.new_page()
            page.goto(base + "index.html")
            page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=120_000)
            assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
            assert page.input_value("#penalty") == "1.2"  # the demo's measured default
            page.fill("#prompt", prompt)
            page.fill("#tokens", "24")
            page.fill("#penalty", "1")  # plain greedy: what Python's reference decodes
            page.click("#generate")
            page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            output, stats, status = page.inner_text("#output"), page.inner_text("#stats"), page.inner_text("#status")
            last = page.evaluate("window.edgedistil.last")
            js_ids = page.evaluate(f"window.edgedistil.lm.encode({json.dumps(prompt)})")
            # session options reach onnxruntime-web: unfolded int8 weights give the same ids, a bad option fails
            unfolded = page.evaluate("""async (ids) => {
              const { load } = await import("./edgedistil-web.js");
              const lm = await load({ sessionOptions: { graphOptimizationLevel: "disabled" } });
              const res = await lm.generate(ids, { maxNewTokens: 8, stopAtEos: false });
              const penalized = await lm.generate(ids, { maxNewTokens: 24, stopAtEos: false, repetitionPenalty: 3 });
              let badPenalty = null;
              try { await lm.generate(ids, { repetitionPenalty: 0 }); } catch (e) { badPenalty = String(e); }
              let refused = null;
              try { await load({ sessionOptions: { graphOptimizationLevel: "no-such-level" } }); }
              catch (e) { refused = String(e); }
              return { ids: res.ids, penalized: penalized.ids, badPenalty, refused };
            }""", js_ids)
        finally:
            ctx.close()
    assert "tokens/s" in stats and "first token" in stats
    assert f"edgedistil-web.js on {SHIPPED} (the file Transformers.js' q8 loads)" in status
    assert output.startswith(prompt) and len(output.strip()) > len(prompt)  # generated text appeared
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert js_ids == Tokenizer.from_file(str(bundle / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids
    assert last["promptIds"] == js_ids
    chunk = json.loads((bundle / "manifest.json").read_text())["graphs"][0]["tokens_per_call"]
    ref = reference_ids(bundle / SHIPPED, js_ids, 24, chunk)
    assert last["ids"] == ref[: len(last["ids"])]  # the page stops early only at the end-of-sequence token
    assert unfolded["ids"] == ref[:8] and unfolded["refused"], unfolded
    # the repetition penalty (the answer's own tokens) decodes as Python's, and changes a greedy answer that repeats
    assert len(set(ref)) < len(ref), "the tiny model's greedy answer should repeat a token"
    penalized = reference_ids(bundle / SHIPPED, js_ids, 24, chunk, repetition_penalty=3.0)
    assert unfolded["penalized"] == penalized and penalized != ref, (unfolded["penalized"], penalized, ref)
    assert "repetitionPenalty 0 is not a number > 0" in unfolded["badPenalty"], unfolded["badPenalty"]


def _raw_get(base: str, path: str) -> tuple[int, bytes, str]:
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, head.decode(errors="replace")


def test_server_serves_only_the_bundle_folder(tmp_path):
    bundle, secret = tmp_path / "bundle", tmp_path / "secret.txt"
    bundle.mkdir()
    (bundle / "index.html").write_text("<p>hello</p>")
    secret.write_text("TOP SECRET")
    os.symlink(secret, bundle / "link.txt")
    (bundle / "sub").mkdir()
    with serve(bundle) as base:
        status, body, head = _raw_get(base, "/index.html")
        assert status == 200 and body == b"<p>hello</p>"
        assert "Cross-Origin-Embedder-Policy: require-corp" in head
        assert "Cross-Origin-Opener-Policy: same-origin" in head
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/sub/../../secret.txt",
                     "/link.txt", "/sub/", "//etc/passwd", "/%00", "/..\\secret.txt"):
            status, body, _ = _raw_get(base, path)
            assert status == 404 and b"TOP SECRET" not in body and b"root:" not in body, path
    with pytest.raises(OSError):  # stopped afterwards
        _raw_get(base, "/index.html")


def test_missing_chromium_fails_with_the_install_command(tiny_run, tmp_path):
    proc = edgedistil("bench", "--target", "web", "--bundle", bundle_of(tiny_run), "--config", TINY, "--out", tmp_path,
                      env={"EDGEDISTIL_CHROMIUM": str(tmp_path / "no-chromium"), **WEB_RUNTIME_ENV})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "Chromium is not installed" in lines[-1] and "apt-get install -y chromium" in lines[-1]
    assert not (tmp_path / "bench.json").exists()


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    from edgedistil.convert.web import web_runtime

    monkeypatch.setenv("EDGEDISTIL_NPM_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm, no node
    with pytest.raises(EdgeError, match="npm.*not on PATH.*apt-get install nodejs npm"):
        web_runtime()
    assert not (tmp_path / "empty").exists()  # nothing half-installed


def test_web_bundle_carries_the_hf_layout_that_transformersjs_loads(tiny_run):
    bundle = bundle_of(tiny_run)
    manifest = json.loads((bundle / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"config.json", "genai_config.json", "onnx/model_quantized.onnx", "tokenizer_config.json"} <= paths
    tjs = manifest["hf_onnx"]["consumers"]["transformers.js"]
    assert tjs["ran"] and tjs["files"]["q8"]["ids_equal"] and len(tjs["files"]["q8"]["ids"]) >= 8, tjs
    assert manifest["hf_onnx"]["consumers"]["onnxruntime-genai"]["ids_equal"]
