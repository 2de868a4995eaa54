"""Named device profiles (targets/devices/*.toml) and the decode speed they project for a bundle.

Decoding one token reads every weight once, so a device cannot decode faster than its memory bandwidth divided by
the model's weight bytes. The projection is that quotient: an estimate, labelled as one everywhere it is shown, never
a measurement. A profile says whether its bandwidth was measured by a benchmark ("measured") or is the memory spec's
maximum ("peak": the projection is then an upper bound), and where each figure was published.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from edgedistil.errors import EdgeError
from edgedistil.schema import TARGETS_DIR, at, coerce, read_toml, unknown_key

DEVICES_DIR = TARGETS_DIR / "devices"
BASES = ("measured", "peak")
# the files a runtime reads weights from, as a bundle's manifest lists them
WEIGHT_SUFFIXES = (".onnx", ".data", ".tflite", ".bin")


@dataclass
class DeviceProfile:
    name: str = ""
    soc: str = ""
    ram_gb: float = 0.0
    ram_source: str = ""
    bandwidth_gbs: float = 0.0
    bandwidth_basis: str = ""
    bandwidth_source: str = ""
    path: str = ""


def device_names() -> list[str]:
    return sorted(p.stem for p in DEVICES_DIR.glob("*.toml"))


def load_device(name_or_path: str | Path) -> DeviceProfile:
    """A device profile by name (`iphone-15-pro`) or by path to its TOML; every key is required and checked."""
    p = Path(name_or_path)
    if p.suffix == ".toml":
        path = p
    else:
        path = DEVICES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            near = difflib.get_close_matches(str(name_or_path), device_names(), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise EdgeError(f"unknown device '{name_or_path}'",
                            f"{hint}use one of: {', '.join(device_names())}, or a path to a device TOML")
    if not path.is_file():  # read_toml's own hint points at `edgedistil init`, which writes no device profile
        raise EdgeError(f"device profile {path} does not exist",
                        f"check the path, or copy one of {DEVICES_DIR}/*.toml and fill in its figures and sources")
    raw = read_toml(path, "device profile")
    where = str(path)
    defaults = DeviceProfile()
    fields = [f.name for f in dataclasses.fields(DeviceProfile) if f.name != "path"]
    for key in raw:
        if key not in fields:
            raise unknown_key(where, key, fields)
    values = {}
    for key in fields:
        if key not in raw:
            raise EdgeError(f"{where}: '{key}' is missing", f"add {key} = ... (every figure needs its source)")
        values[key] = coerce(where, key, raw[key], getattr(defaults, key))
    for key in ("ram_gb", "bandwidth_gbs"):
        if not values[key] > 0:
            raise EdgeError(f"{at(where, key)}: '{key}' must be > 0, got {values[key]}", f"change {key} in that file")
    if values["bandwidth_basis"] not in BASES:
        raise EdgeError(f"{at(where, 'bandwidth_basis')}: bandwidth_basis must be one of {', '.join(BASES)}, got "
                        f"{values['bandwidth_basis']!r}", "measured: a benchmark's figure; peak: the spec's maximum")
    for key in ("ram_source", "bandwidth_source"):
        if not values[key].strip():
            raise EdgeError(f"{at(where, key)}: '{key}' is empty", "say where the figure was published")
    return DeviceProfile(**values, path=str(path))


def weight_bytes(manifest: dict) -> int:
    return sum(f["bytes"] for f in manifest.get("files", []) if f["path"].endswith(WEIGHT_SUFFIXES))


def project(manifest: dict, device: DeviceProfile) -> dict:
    """The decode tokens/s `device` could reach with this bundle's weights, if memory bandwidth is the limit."""
    wbytes = weight_bytes(manifest)
    if not wbytes:
        raise EdgeError("the bundle's manifest lists no weight file (.onnx, .data, .tflite, .bin)",
                        "rebuild the bundle with `edgedistil build`")
    bound = "an upper bound: peak bandwidth" if device.bandwidth_basis == "peak" else "measured bandwidth"
    return {
        "device": device.name, "soc": device.soc, "ram_gb": device.ram_gb,
        "bandwidth_gbs": device.bandwidth_gbs, "bandwidth_basis": device.bandwidth_basis,
        "bandwidth_source": device.bandwidth_source, "weight_bytes": wbytes,
        "decode_tokens_per_s": device.bandwidth_gbs * 1e9 / wbytes,
        "weights_share_of_ram": wbytes / (device.ram_gb * 1e9),
        "label": f"estimate ({bound} / weight bytes), not a measurement",
    }
