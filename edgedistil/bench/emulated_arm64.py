"""`edgedistil bench --target android --emulator`: the shipped .tflite (and .litertlm) on an emulated ARM64 CPU,
the phone's instruction set and the phone's build of LiteRT and LiteRT-LM, without a phone.

The root is set up once into the edgedistil cache, from Debian's packages and PyPI's wheels only
(shared/notes/consumers.md, probed step by step):
1. `debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.11` (the first stage only downloads and
   unpacks the base), then `dpkg -x` of every downloaded .deb (that unpacks python3.11 too; the second stage would
   need binfmt_misc, which a container often lacks, so nothing is configured or run in the root);
2. the aarch64 wheels of ai-edge-litert, litert-lm-api and numpy, the versions this environment runs, with
   `pip install --platform manylinux_2_27_aarch64 --target SITE`.
Programs run as `qemu-aarch64-static -cpu max -L ROOT`, with an ARM /proc/cpuinfo bound over the host's in a private
mount namespace (`unshare -m`): XNNPACK's cpuinfo reads the host's x86 file otherwise and the interpreter segfaults.

The same worker (bench/arm64_worker.py) runs natively too, so the x86-64 and ARM64 figures differ only in the
kernels. Speeds under QEMU are emulated, never a phone's; the numerics are the ARM kernels'.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

import edgedistil
from edgedistil.bench.worker import run_worker
from edgedistil.errors import EdgeError, read_json, write_json

LABEL = "emulated ARM64 (QEMU), not a phone"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "unshare": "util-linux",
         "dpkg": "dpkg"}
WHEELS = ("ai-edge-litert", "litert-lm-api", "numpy")  # pinned to the versions installed here (pyproject's pins)
# A Neoverse N1's /proc/cpuinfo (Cortex-A76 class, as in most current phones). Its Features line decides which
# XNNPACK kernels run: `asimddp` the int8 NEON dot-product kernels, `fphp asimdhp` the fp16 arithmetic ones; drop
# them to emulate an older phone's kernels (plain NEON).
CPUINFO = Path(__file__).with_name("arm64_cpuinfo")
FIX_TOOLS = "install Debian's qemu-user-static and debootstrap (scripts/setup.sh does)"


@dataclass(frozen=True)
class Arm64Root:
    root: Path  # the arm64 Debian root (python3.11 in usr/bin)
    site: Path  # the aarch64 wheels

    def python(self) -> list[str]:
        """The command line of the root's python3.11 under QEMU, with the ARM cpuinfo bound in its own namespace."""
        package_parent = Path(edgedistil.__file__).resolve().parent.parent
        return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /proc/cpuinfo && exec "$@"', str(CPUINFO),
                "qemu-aarch64-static", "-cpu", "max", "-L", str(self.root),
                "-E", f"PYTHONPATH={self.site}:{package_parent}", "-E", "PYTHONDONTWRITEBYTECODE=1",
                str(self.root / "usr" / "bin" / "python3.11")]


def wheel_pins() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in WHEELS]


def root_folder() -> Path:
    from edgedistil.sources.cache import cache_dir

    tag = "-".join(pin.replace("==", "") for pin in wheel_pins())
    return cache_dir() / "arm64-root" / f"debian-{DEBIAN_SUITE}-{tag}"


def require_tools() -> None:
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise EdgeError(f"{tool} is not on PATH (Debian package {package}); the emulated ARM64 bench needs it",
                            FIX_TOOLS)
    proc = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgeError(f"`unshare -m` is not permitted here ({(proc.stderr.strip() or 'no message')[:200]}); the "
                        "emulated bench binds an ARM /proc/cpuinfo in a private mount namespace",
                        "run it as root, or in a container with CAP_SYS_ADMIN")


def _run(cmd: list[str], what: str, on_line=None) -> None:
    """Run `cmd`; `on_line` sees each line of its output as it comes (for a progress bar). A failure names `what`
    and the command's last line."""
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        try:
            for line in proc.stdout:
                lines.append(line)
                if on_line:
                    on_line(line)
        except BaseException:  # Ctrl-C: stop the child before the caller removes the folder it writes into
            proc.kill()
            raise
    if proc.returncode != 0:
        last = ("".join(lines).strip().splitlines() or ["no output"])[-1]
        raise EdgeError(f"{what} failed: {last[:300]}", "check the network to the Debian mirror and PyPI, then rerun")


def _bar(desc: str, total: int | None, unit: str):
    """A live bar on a terminal; in logs (CI, pipes) the setup's three log lines say where it is instead."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5,
                disable=not sys.stderr.isatty())


def setup_root(log=print) -> Arm64Root:
    """The arm64 root and its wheels, built once into the cache (in a temp folder, renamed when complete)."""
    require_tools()
    final = root_folder()
    ready = Arm64Root(final / "root", final / "site")
    if (final / "ready.json").is_file():
        return ready
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        t0 = time.perf_counter()
        log(f"bench[android-emulated]: setup 1/3: debootstrap arm64 Debian {DEBIAN_SUITE} into {final} (once)")
        with _bar("arm64 root: debootstrap downloads", None, "pkg") as bar:
            _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3.11",
                  DEBIAN_SUITE, str(tmp / "root"), DEBIAN_MIRROR], "debootstrap",
                 on_line=lambda line: bar.update(line.startswith("I: Retrieving")))
        debs = sorted((tmp / "root" / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        log(f"bench[android-emulated]: setup 2/3: unpacking {len(debs)} .debs ({time.perf_counter() - t0:.0f} s)")
        with _bar("arm64 root: unpacking", len(debs), "deb") as bar:
            for deb in debs:
                _run(["dpkg", "-x", str(deb), str(tmp / "root")], f"dpkg -x {deb.name}")
                deb.unlink()  # the unpacked root is what runs; the archives would only double the cache
                bar.update()
        log(f"bench[android-emulated]: setup 3/3: aarch64 wheels {', '.join(wheel_pins())} "
            f"({time.perf_counter() - t0:.0f} s)")
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-conflicts",
              "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux2014_aarch64", "--only-binary=:all:",
              "--python-version", "3.11", "--implementation", "cp", "--target", str(tmp / "site"), *wheel_pins()],
             "pip install of the aarch64 wheels")
        write_json(tmp / "ready.json", {"debian": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "wheels": wheel_pins(),
                                        "setup_seconds": round(time.perf_counter() - t0, 1)})
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"bench[android-emulated]: setup done: {final}")
    return ready


def run_fidelity_worker(python: list[str] | None, spec: dict, where: str) -> tuple[dict, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "logits_out": str(Path(tmp) / "logits.npy")}
        out = run_worker("edgedistil.bench.arm64_worker", spec, f"the {where} run of {spec['model']} failed",
                         "rerun with the bundle rebuilt; under QEMU, delete the cached root to set it up again",
                         python=python)
        return out, np.load(spec["logits_out"], allow_pickle=False)


def run_emulated_bench(bundle: Path, manifest: dict, heldout_ids: np.ndarray, student_dir: Path,
                       teacher_tflite: Path | None, new_tokens: int, segments: int = 16, greedy_tokens: int = 64,
                       log=print) -> dict:
    """The bundle's .tflite teacher-forced over held-out text and generating greedily, on emulated ARM64 and on
    this x86-64 host, each against the fp32 PyTorch student; the student/teacher decode ratio on each; LiteRT-LM's
    aarch64 runtime on the .litertlm."""
    from tokenizers import Tokenizer

    from edgedistil.decoding import greedy
    from edgedistil.fidelity import compare_teacher_forced, greedy_agreement, greedy_prompt, teacher_forced
    from edgedistil.model import load_hf_folder
    from edgedistil.runtimes.torch_step import TorchLM

    arm = setup_root(log)
    chunk, max_len = manifest["runtime"]["prefill_len"], manifest["kv_cache"]["max_len"]
    model, litertlm = Path(bundle) / manifest["runtime"]["interpreter_model"], Path(bundle) / manifest["runtime"]["model"]
    prompt = greedy_prompt(heldout_ids, chunk)
    n = min(greedy_tokens, max_len - len(prompt))
    reference = TorchLM(load_hf_folder(student_dir, max_len=max_len).eval(), max_len)
    ref_logits, targets = teacher_forced(reference, heldout_ids, chunk, max_len, segments)
    ref_tokens = greedy(reference.step, reference.empty_cache(), prompt, n, chunk, max_len)
    tokenizer = Tokenizer.from_file(str(Path(bundle) / "tokenizer.json"))
    speed_models = {"student": str(model), **({"teacher": str(teacher_tflite)} if teacher_tflite else {})}
    spec = {"model": str(model), "heldout_ids": [int(t) for t in heldout_ids], "chunk": chunk, "max_len": max_len,
            "segments": segments, "greedy_tokens": n,
            "speed": {"models": speed_models, "prompt": prompt, "new_tokens": new_tokens},
            "litertlm": {"model": str(litertlm), "prompt": tokenizer.decode(prompt), "new_tokens": 16}}
    record = {"stage": "bench[android-emulated]", "label": LABEL, "model": model.name,
              "reference": "fp32 PyTorch student", "binding": "ai-edge-litert Interpreter, 1 thread, XNNPACK",
              "cpu": f"qemu-aarch64-static -cpu max, /proc/cpuinfo of {CPUINFO.name}: " + next(
                  line.split(":", 1)[1].strip() for line in CPUINFO.read_text().splitlines()
                  if line.startswith("Features")),
              "wheels": wheel_pins(), "root": str(arm.root)}
    for where, python in ((platform.machine(), None), ("arm64", arm.python())):
        t0 = time.perf_counter()
        out, logits = run_fidelity_worker(python, spec, where)
        fid = {**compare_teacher_forced(ref_logits, logits, targets), **greedy_agreement(ref_tokens, out["greedy"])}
        speed = out["decode_tokens_per_s"]
        record[where] = {"machine": out["machine"], **fid, "decode_tokens_per_s": speed,
                         "speedup_vs_teacher": round(speed["student"] / speed["teacher"], 3)
                         if "teacher" in speed else None, "litertlm": out["litertlm"],
                         "wall_seconds": round(time.perf_counter() - t0, 1)}
        log(f"bench[android-emulated]: {where} ({out['machine']}): top-1 {fid['top1_agreement']:.4f}, KL "
            f"{fid['kl_mean']:.2e}, greedy {fid['greedy_tokens_matching']}/{fid['greedy_tokens']}, decode "
            + ", ".join(f"{r} {v:.1f} tok/s" for r, v in speed.items())
            + (" (emulated)" if python else "") + "; LiteRT-LM "
            + ("ran" if out["litertlm"]["ran"] else f"failed: {out['litertlm']['error']}"))
    host, emu = record[platform.machine()], record["arm64"]
    record["top1_gap"] = round(abs(emu["top1_agreement"] - host["top1_agreement"]), 6)
    record["litertlm_text_equal_host"] = (emu["litertlm"].get("text") == host["litertlm"].get("text")
                                          if emu["litertlm"]["ran"] and host["litertlm"]["ran"] else None)
    return record


def write_into_manifest(bundle: Path, record: dict) -> None:
    """The record as the bundle manifest's `emulated_arm64` (the manifest lists the files, not itself)."""
    path = Path(bundle) / "manifest.json"
    manifest = read_json(path, "bundle manifest")
    manifest["emulated_arm64"] = record
    write_json(path, manifest)
