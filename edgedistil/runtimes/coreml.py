"""Core ML itself (macOS 15+ only) as a step function over an edgedistil .mlpackage.

coremltools' `MLModel.predict` calls into Core ML through libcoremlpython, which exists only in its macOS wheels;
on any other OS this module refuses with EdgeError before touching coremltools. A stateful (iOS 18) package is
loaded once per function (`function_name="prefill"` / `"decode"`) and both run against one `make_state()` state;
a stateless (iOS 17) package has one function that takes and returns the cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgedistil.errors import EdgeError

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
NOT_ON_THIS_HOST = "Core ML execution needs macOS"


def require_macos(platform: str | None = None) -> None:
    platform = platform or sys.platform
    if platform != "darwin":
        raise EdgeError(f"{NOT_ON_THIS_HOST} (this host is {platform}); Linux checks the package with "
                        "`edgedistil verify` and the MIL reference instead",
                        "run `edgedistil bench --target ios --bundle dist/ios` on a Mac with macOS 15 or later")


def step_feed(ids: list[int], position: int, cache=None) -> dict[str, np.ndarray]:
    """The inputs of one call: input_ids int32 [1, T] and position int32 [1]; the stateless cache when given."""
    feed = {"input_ids": np.asarray([ids], dtype=np.int32), "position": np.asarray([position], dtype=np.int32)}
    if cache is not None:
        feed["k_cache"], feed["v_cache"] = cache
    return feed


class CoreMLLM:
    def __init__(self, package: Path | str, compute_units: str = "ALL"):
        require_macos()
        import coremltools as ct

        from edgedistil.convert.ios_package import inspect_package

        if compute_units not in COMPUTE_UNITS:
            raise EdgeError(f"unknown compute units '{compute_units}'", f"use one of: {', '.join(COMPUTE_UNITS)}")
        self.package = Path(package)
        info = {f["name"]: f for f in inspect_package(self.package)["functions"]}
        units = getattr(ct.ComputeUnit, compute_units)
        self.stateful = "decode" in info
        if self.stateful:
            prefill_len = info["prefill"]["inputs"][0]["shape"][1]
            self.models = {prefill_len: ct.models.MLModel(str(self.package), compute_units=units,
                                                          function_name="prefill"),
                           1: ct.models.MLModel(str(self.package), compute_units=units, function_name="decode")}
            self.cache_shape = info["decode"]["states"][0]["shape"]
        else:
            self.main = ct.models.MLModel(str(self.package), compute_units=units)
            self.cache_shape = info["main"]["inputs"][2]["shape"]
        self.max_len = int(self.cache_shape[3])

    def empty_cache(self):
        if self.stateful:
            return self.models[1].make_state()  # zero-filled; the prefill function writes the same state
        return (np.zeros(self.cache_shape, np.float16), np.zeros(self.cache_shape, np.float16))

    def step(self, ids: list[int], position: int, cache):
        if self.stateful:
            out = self.models[len(ids)].predict(step_feed(ids, position), state=cache)
            return np.asarray(out["logits"])[0].astype(np.float32), cache
        out = self.main.predict(step_feed(ids, position, cache))
        return np.asarray(out["logits"])[0].astype(np.float32), (out["k_cache_out"], out["v_cache_out"])
