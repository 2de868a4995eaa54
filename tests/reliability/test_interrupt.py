"""Interruption and failing disks: finished work is kept, half-written work is removed, the message is one line."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, TINY, TINY_BUDGETS, WEB_METHOD, WEB_RUNTIME_ENV
from edgedistil.errors import atomic_dir, atomic_file


def default_sigint() -> None:
    """A suite started in the background (`nohup ... &`) has SIGINT ignored, and a child that starts with it ignored
    never turns it into KeyboardInterrupt; give the build the disposition an interactive Ctrl-C meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_distill_leaves_no_half_written_stage(tmp_path):
    out = tmp_path / "run"
    # enough steps that the signal lands inside the loop: the tiny recipe's 30 run in a tenth of a second, so on a
    # loaded machine the training could end before the signal arrived
    proc = subprocess.Popen([sys.executable, "-m", "edgedistil.cli", "build", "--target", "web", "--config", TINY,
                             "--set", "distill.steps=5000", "--out", out], cwd=REPO, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, preexec_fn=default_sigint)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("distill: step"):  # inside the training loop, its temp folder open
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == 130, "".join(seen) + rest
    assert "interrupted" in rest.strip().splitlines()[-1]
    assert "Traceback" not in rest
    assert not (out / "distill").exists() and not (out / "dist").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temp folders left behind"
    assert any(line.split()[:2] == ["distill", "failed"] for line in rest.splitlines())  # the stage list


def test_disk_full_keeps_the_previous_artifact(tmp_path):
    final = tmp_path / "stage"
    with atomic_dir(final) as tmp:
        (tmp / "model.onnx").write_text("good")
    with pytest.raises(OSError) as e:
        with atomic_dir(final) as tmp:
            (tmp / "model.onnx").write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "model.onnx"))
    assert e.value.errno == errno.ENOSPC
    assert (final / "model.onnx").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    with pytest.raises(OSError):
        with atomic_file(final / "record.json") as tmp:
            tmp.write_text("{")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in final.iterdir()) == ["model.onnx"]


def test_disk_full_through_the_cli_is_one_line(tmp_path):
    # RLIMIT_FSIZE makes every write past 1 MB fail with EFBIG, as a full disk would with ENOSPC
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
            "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "from edgedistil.cli import main; sys.exit(main())")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", code, "build", "--target", "web", "--config", TINY, "--out", out],
                          cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines[-1].startswith("edgedistil: error: ") and "File too large" in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_sigkill_during_the_bundle_stages_then_rerun_finishes_from_the_cache(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    for done in ("stages/bench-web.json", "stages/convert-web.json"):  # as if the build had stopped before them
        (out / done).unlink()
    shutil.rmtree(out / "dist")
    args = [sys.executable, "-m", "edgedistil.cli", "build", "--target", "web", "--config", TINY, "--budgets",
            TINY_BUDGETS, "--out", out]
    env = {**os.environ, **WEB_RUNTIME_ENV}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if "[bench[web]] running" in line:  # the bundle is being assembled and run in a temp folder
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for stage in ("distill", "export[student-hf]", "export[teacher-hf]", f"quantize[{WEB_METHOD}-hf]", "bench"):
        assert f"[{stage}] cached" in rerun.stderr
    assert "[bench[web]] running" in rerun.stderr and "[convert[web]] running" in rerun.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "a killed run's temp folders were kept"
    verify = subprocess.run([sys.executable, "-m", "edgedistil.cli", "verify", out / "dist" / "web"], cwd=REPO,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr[-1000:]
