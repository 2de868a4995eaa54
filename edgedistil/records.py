"""What every stage writes beside its artifacts: file hashes, library versions and the cache key of its inputs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path, root: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def folder_fingerprint(folder: Path) -> str:
    """A cheap identity for a folder of inputs: names, sizes and modification times of its files."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def stage_key(stage: str, *parts) -> str:
    """Hash of a stage's name, config and input identities: equal keys mean the stage can be reused."""
    from edgedistil import __version__

    blob = json.dumps([stage, __version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("edgedistil", "torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def machine(load_before: tuple[float, ...], **extra) -> dict:
    """The host a benchmark ran on, and its load average before and after (a timing taken beside another job
    shows in them)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), **extra,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
