"""verify: a bundle is what its manifest says (every file's size and sha256) and its model loads and runs (the
bundle's target module says how)."""

from __future__ import annotations

from pathlib import Path

from edgedistil.check.budgets import load_bundle_manifest
from edgedistil.errors import EdgeError
from edgedistil.records import sha256_file
from edgedistil.targets import target_of


def verify_bundle(bundle: Path) -> dict:
    bundle = Path(bundle)
    manifest = load_bundle_manifest(bundle)
    for key in ("schema_version", "target", "files", "graphs", "kv_cache"):
        if key not in manifest:
            raise EdgeError(f"{bundle}/manifest.json lacks '{key}'", "rebuild the bundle with `edgedistil build`")
    for f in manifest["files"]:
        path = bundle / f["path"]
        if not path.resolve().is_relative_to(bundle.resolve()):
            raise EdgeError(f"manifest entry {f['path']!r} points outside the bundle", "rebuild the bundle")
        if not path.is_file():
            raise EdgeError(f"{path} is listed in the manifest but missing", "copy the whole bundle folder again")
        if path.stat().st_size != f["bytes"] or sha256_file(path) != f["sha256"]:
            raise EdgeError(f"{path} does not match its sha256 in the manifest (tampered or corrupt)",
                            "copy the bundle again from the build output, or rebuild it")
    listed = {f["path"] for f in manifest["files"]} | {"manifest.json"}
    extra = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
                   if p.is_file() and p.relative_to(bundle).as_posix() not in listed)
    if extra:
        raise EdgeError(f"{bundle} holds files the manifest does not list: {', '.join(extra[:3])}",
                        "remove them, or rebuild the bundle")
    runs = target_of(manifest["target"]).verify(bundle, manifest)  # the target's models load and run
    return {"bundle": str(bundle), "target": manifest["target"], "files_checked": len(manifest["files"]),
            "model_runs": runs, "ok": True}
