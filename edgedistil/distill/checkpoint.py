"""Resumable training checkpoints: tensors in safetensors, scalars in JSON, nothing pickled.

A checkpoint holds what a bit-for-bit continuation needs: the trainable weights (student and feature
projections), AdamW's state, the data sampler's and the global torch RNG states, the step, the metrics so far and
the key of the run's inputs. Each is written to a temp folder and renamed, so a kill mid-write leaves the previous
checkpoint intact; only the newest is kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgedistil.errors import EdgeError, atomic_dir

_NAME = re.compile(r"^step-(\d{8})$")


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW's state dict split into flat tensors (safetensors) and the JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, step: int, net: torch.nn.Module, opt: torch.optim.Optimizer,
                    sampler: torch.Generator, info: dict) -> Path:
    """Write `folder`/step-NNNNNNNN after `step` finished optimizer steps; drop older checkpoints."""
    folder = Path(folder)
    final = folder / f"step-{step:08d}"
    weights = {n: p.detach().to("cpu").contiguous() for n, p in net.named_parameters()}  # shared params once
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    rng = {"sampler": sampler.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(final) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **info}) + "\n")
    for old in folder.iterdir():
        if old != final and _NAME.match(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if _NAME.match(p.name) and (p / "state.json").is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, sampler: torch.Generator,
                    key: str) -> dict:
    """Restore weights, optimizer and RNG states in place; return state.json (step, metrics so far, ...)."""
    state = json.loads((path / "state.json").read_text())
    if state.get("key") != key:
        raise EdgeError(f"checkpoint {path} was made from another recipe, teacher or corpus",
                        "restore the recipe and inputs it was made with, or run without --resume to start over")
    weights = load_file(str(path / "model.safetensors"))
    params = dict(net.named_parameters())
    if set(weights) != set(params):
        raise EdgeError(f"checkpoint {path} holds other weights than this run's model",
                        "run without --resume to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    opt.load_state_dict(_optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"]))
    rng = load_file(str(path / "rng.safetensors"))
    sampler.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
