"""verify: a bundle is what its manifest says (every file's size and sha256) and its model loads and runs."""

from __future__ import annotations

from pathlib import Path

from edgedistil.check.budgets import load_bundle_manifest
from edgedistil.errors import EdgeError
from edgedistil.records import sha256_file


def check_onnx_io(path: Path, session, graphs: list[dict]) -> None:
    """The model's own input and output names, dtypes and fixed dims against what the manifest promises."""
    dtypes = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(float16)": "float16"}
    for g in graphs:
        for side, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            have = {a.name: a for a in actual}
            for want in g[side]:
                a = have.get(want["name"])
                if a is None:
                    raise EdgeError(f"{path.name} has no {side[:-1]} '{want['name']}' that the manifest's "
                                    f"{g['name']} graph lists", "rebuild the bundle; the manifest and model differ")
                fixed_ok = len(a.shape) == len(want["shape"]) and all(
                    not isinstance(d, int) or d == w for d, w in zip(a.shape, want["shape"]))
                if dtypes.get(a.type) != want["dtype"] or not fixed_ok:
                    raise EdgeError(f"{path.name} {side[:-1]} '{a.name}' is {dtypes.get(a.type, a.type)} "
                                    f"{list(a.shape)}, but the manifest says {want['dtype']} {want['shape']}",
                                    "rebuild the bundle; the manifest and model differ")


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
    runs = []
    if manifest["target"] == "web":
        from edgedistil.runtimes.ort import OrtLM

        for file in sorted({g["file"] for g in manifest["graphs"]}):
            lm = OrtLM(bundle / file)
            check_onnx_io(bundle / file, lm.session, [g for g in manifest["graphs"] if g["file"] == file])
            logits, _ = lm.step([0], 0, lm.empty_cache())
            if not (logits == logits).all():
                raise EdgeError(f"{bundle / file} produced NaN logits", "rebuild the bundle")
            runs.append({"file": file, "runtime": "onnxruntime CPU", "io_matches_manifest": True,
                         "decode_step": "ok"})
    elif manifest["target"] == "android":  # the signatures against the manifest, one LiteRT decode step
        from edgedistil.convert.android import verify_tflite

        runs.extend(verify_tflite(bundle, manifest))
    elif manifest["target"] == "ios":  # no Core ML on Linux: the spec against the manifest, one MIL reference step
        from edgedistil.convert.ios import verify_package

        runs.extend(verify_package(bundle, manifest))
    return {"bundle": str(bundle), "target": manifest["target"], "files_checked": len(manifest["files"]),
            "model_runs": runs, "ok": True}
