"""bench --target android --device: the bundle on a phone over adb, with LiteRT's own benchmark_model tool.

The tool is an Android arm64 binary the user supplies (`--benchmark-tool PATH`; LiteRT publishes nightly builds,
see docs/android.md). edgedistil pushes it and the model to /data/local/tmp/edgedistil/, runs the `decode` and the
`prefill` signature with XNNPACK, parses the tool's timing and memory lines and records the device model and
Android version. Without adb, a device, or the tool, it stops with a one-line message and a non-zero exit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from edgedistil.errors import EdgeError
from edgedistil.runtimes.litert import prefill_signature

REMOTE_DIR = "/data/local/tmp/edgedistil"
NO_ADB = "install Android platform-tools (adb) and put it on PATH, or drop --device to bench on the host"


def find_adb(adb: str | None = None) -> str:
    path = adb or shutil.which("adb")
    if not path or not Path(path).exists():
        raise EdgeError("adb was not found", NO_ADB)
    return path


def parse_devices(text: str) -> list[dict]:
    """`adb devices -l` -> [{"serial", "state", "model"}]."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        extra = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        out.append({"serial": parts[0], "state": parts[1], "model": extra.get("model")})
    return out


def pick_device(devices: list[dict], serial: str | None) -> str:
    ready = [d for d in devices if d["state"] == "device"]
    if serial:
        match = next((d for d in devices if d["serial"] == serial), None)
        if match is None:
            raise EdgeError(f"no device '{serial}' is attached (adb lists: "
                            f"{', '.join(d['serial'] for d in devices) or 'none'})",
                            "check the cable and `adb devices`, or pass another --device SERIAL")
        if match["state"] != "device":
            raise EdgeError(f"device '{serial}' is {match['state']}",
                            "unlock the phone and accept the USB debugging prompt, then retry")
        return serial
    if not ready:
        raise EdgeError("no Android device is attached (`adb devices` lists none ready)",
                        "connect a phone with USB debugging on, or drop --device to bench on the host")
    if len(ready) > 1:
        raise EdgeError(f"{len(ready)} devices are attached ({', '.join(d['serial'] for d in ready)})",
                        "pick one with --device SERIAL")
    return ready[0]["serial"]


def benchmark_command(adb: str, serial: str, model_remote: str, signature: str, threads: int, runs: int,
                      position_max: int) -> list[str]:
    """The tool's command line for one signature. Inputs are the tool's random fill, kept in range: token ids in
    [0, 100] and positions in [0, position_max], so the cache write and RoPE lookup stay valid."""
    return [adb, "-s", serial, "shell", f"{REMOTE_DIR}/benchmark_model", f"--graph={model_remote}",
            f"--signature_to_run_for={signature}", f"--num_threads={threads}", "--use_xnnpack=true",
            f"--num_runs={runs}", "--warmup_runs=3", "--report_peak_memory_footprint=true",
            f"--input_layer_value_range=tokens,0,100:input_pos,0,{position_max}"]


_TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), "
                      r"Warmup \(avg\): ([\d.]+), Inference \(avg\): ([\d.]+)")
_MEMORY = re.compile(r"(Peak memory footprint|Memory footprint delta from the start of the tool) \(MB\): "
                     r"init=([\d.]+) overall=([\d.]+)")
_PERIODIC = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)")
_STEADY = re.compile(r"count=(\d+) first=(\d+) curr=(\d+) min=(\d+) max=(\d+) avg=([\d.e+]+) std=(\d+)")


def parse_benchmark_output(text: str) -> dict:
    """The figures of one benchmark_model run: init and per-inference microseconds, the steady-state spread,
    and memory (MB) as the tool reports it."""
    m = _TIMINGS.search(text)
    if not m:
        tail = (text.strip().splitlines() or ["no output"])[-1][:200]
        raise EdgeError(f"benchmark_model printed no timing line (last line: {tail})",
                        "run the same command by hand with `adb shell` to see why; check the tool is arm64 LiteRT")
    out = {"init_us": float(m[1]), "first_inference_us": float(m[2]), "warmup_avg_us": float(m[3]),
           "inference_avg_us": float(m[4])}
    steady = _STEADY.findall(text)
    if steady:
        count, _, _, lo, hi, _, std = steady[-1]  # the last count= line is the measured (not warm-up) phase
        out.update({"runs": int(count), "inference_min_us": float(lo), "inference_max_us": float(hi),
                    "inference_std_us": float(std)})
    mem = _MEMORY.search(text)
    if mem:
        out["memory_kind"] = "peak" if mem[1].startswith("Peak") else "delta from tool start"
        out["memory_init_mb"], out["memory_overall_mb"] = float(mem[2]), float(mem[3])
    periodic = _PERIODIC.search(text)
    if periodic:
        out["peak_memory_mb"] = float(periodic[1])
    elif mem:
        out["peak_memory_mb"] = out["memory_overall_mb"]
    return out


def _adb(args: list[str], what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise EdgeError(f"{what} failed: {last[:200]}", "check `adb devices` and that the phone is unlocked")
    return proc.stdout


def device_info(adb: str, serial: str) -> dict:
    props = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer",
             "android_version": "ro.build.version.release", "sdk": "ro.build.version.sdk",
             "abi": "ro.product.cpu.abi", "soc": "ro.soc.model"}
    return {k: _adb([adb, "-s", serial, "shell", "getprop", p], f"adb getprop {p}").strip() or None
            for k, p in props.items()}


def run_device_bench(model: Path, tool: Path | None, serial: str | None, threads: int, prefill_len: int,
                     max_len: int, runs: int = 30, adb: str | None = None, log=print) -> dict:
    adb = find_adb(adb)
    serial = pick_device(parse_devices(_adb([adb, "devices", "-l"], "adb devices")), serial)
    if tool is None or not Path(tool).is_file():
        raise EdgeError(f"the LiteRT benchmark tool {tool or '(none given)'} was not found",
                        "download android_arm64 benchmark_model (see docs/android.md) and pass --benchmark-tool PATH")
    info = device_info(adb, serial)
    if info["abi"] and not info["abi"].startswith("arm64"):
        raise EdgeError(f"device {serial} is {info['abi']}, the benchmark tool is arm64",
                        "use an arm64 phone, or a benchmark_model built for that ABI")
    model_remote = f"{REMOTE_DIR}/{Path(model).name}"
    _adb([adb, "-s", serial, "shell", "mkdir", "-p", REMOTE_DIR], "adb mkdir")
    _adb([adb, "-s", serial, "push", str(tool), f"{REMOTE_DIR}/benchmark_model"], "adb push benchmark_model")
    _adb([adb, "-s", serial, "shell", "chmod", "755", f"{REMOTE_DIR}/benchmark_model"], "adb chmod")
    log(f"bench[device]: pushing {Path(model).name} ({Path(model).stat().st_size / 1e6:.1f} MB) to {serial}")
    _adb([adb, "-s", serial, "push", str(model), model_remote], "adb push model")
    record = {"device": {"serial": serial, **info}, "runtime": "LiteRT benchmark_model on the device, XNNPACK",
              "threads": threads, "tool": str(tool)}
    for role, signature, tokens, position_max in (("decode", "decode", 1, max_len - 1),
                                                  ("prefill", prefill_signature(prefill_len), prefill_len, 0)):
        cmd = benchmark_command(adb, serial, model_remote, signature, threads, runs, position_max)
        figures = parse_benchmark_output(_adb(cmd, f"benchmark_model ({signature})"))
        figures["tokens_per_s"] = round(tokens * 1e6 / figures["inference_avg_us"], 2)
        figures["command"] = " ".join(cmd[3:])
        record[role] = figures
        log(f"bench[device]: {signature}: {figures['tokens_per_s']:.1f} tok/s "
            f"({figures['inference_avg_us'] / 1e3:.1f} ms per call)")
    d, p = record["decode"], record["prefill"]
    record.update({"decode_tokens_per_s": d["tokens_per_s"], "prefill_tokens_per_s": p["tokens_per_s"],
                   "ttft_ms": round(p["inference_avg_us"] / 1e3, 2),  # the first new token comes from prefill
                   "peak_memory_mb": max((x for x in (d.get("peak_memory_mb"), p.get("peak_memory_mb")) if x),
                                         default=None)})
    return record
