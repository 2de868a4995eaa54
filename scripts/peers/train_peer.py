"""One peer's KD run, inside that peer's own venv (scripts/bench_peers.py makes the venv and calls this).

    python train_peer.py --peer trl|torchtune|torchtune_lora --job job.json

job.json (written by bench_peers.py) names the student init folder, the teacher folder, the training windows
(.npy, int32 [steps * batch, seq_len + 1], in training order), the per-step learning rates, and the optimizer and
loss settings. The peer trains from that folder on those windows, step for step, and writes
OUT/student (an HF folder, safetensors) and OUT/peer_record.json (train-loop seconds, what the peer ran, versions).

This file imports no edgedistil code (the peer venvs do not have it) and only peer libraries plus torch/numpy.
Weights are read with safetensors only; trust_remote_code stays off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja", "vocab.json", "merges.txt")


def schedule(optimizer, lrs: list[float], peak: float, last_epoch: int = -1):
    """A LambdaLR giving step k the learning rate lrs[k] (edgedistil's warmup + cosine, computed by the caller)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lrs[min(k, len(lrs) - 1)] / peak,
                                             last_epoch=last_epoch)


def copy_tokenizer(src: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


# ---------------------------------------------------------------- TRL: GKDTrainer, off-policy (lmbda 0), forward KL
def run_trl(job: dict, out: Path) -> dict:
    import datasets
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    windows = np.load(job["windows"])
    kw = {"dtype": torch.float32, "trust_remote_code": False, "use_safetensors": True}
    student = AutoModelForCausalLM.from_pretrained(job["student_init"], **kw)
    teacher = AutoModelForCausalLM.from_pretrained(job["teacher"], **kw)
    tok = AutoTokenizer.from_pretrained(job["student_init"], trust_remote_code=False)
    data = datasets.Dataset.from_dict({"input_ids": windows.astype(np.int64).tolist()})

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
        labels = ids.clone()
        labels[:, 0] = -100  # never predicted after GKD's shift; masked so the count is the seq_len predictions
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    args = GKDConfig(
        output_dir=str(out / "trl-out"), max_steps=job["steps"], per_device_train_batch_size=job["batch_size"],
        gradient_accumulation_steps=1, learning_rate=job["lr"], max_grad_norm=job["grad_clip"],
        weight_decay=job["weight_decay"], lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
        bf16=False, fp16=False, use_cpu=job["device"] == "cpu", gradient_checkpointing=False,
        train_sampling_strategy="sequential", save_strategy="no", report_to=[], logging_steps=1,
        seed=job["seed"], dataloader_num_workers=0, disable_dropout=True, max_length=None)
    opt = torch.optim.AdamW(student.parameters(), lr=job["lr"], betas=tuple(job["betas"]),
                            weight_decay=job["weight_decay"])
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, data_collator=collate,
                         train_dataset=data, processing_class=tok,
                         optimizers=(opt, schedule(opt, job["lrs"], job["lr"])))
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    trainer.model.save_pretrained(str(out / "student"), safe_serialization=True)
    copy_tokenizer(Path(job["student_init"]), out / "student")
    curve = [h for h in trainer.state.log_history if "loss" in h]
    return {"train_loop_seconds": train_s, "steps_run": trainer.state.global_step,
            "curve": [{"step": h.get("step"), "loss": h.get("loss"), "grad_norm": h.get("grad_norm"),
                       "lr": h.get("learning_rate")} for h in curve],
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                         "datasets": datasets.__version__, "torch": torch.__version__},
            "trainer": "trl.experimental.gkd.GKDTrainer (lmbda=0: no on-policy generation; beta=0: forward "
                       "KL(teacher || student); seq_kd=False)"}


# ---------------------------------------------------------------- torchtune: knowledge_distillation_single_device
def windows_dataset(tokenizer, path: str, packed: bool = False):
    """torchtune dataset component: the windows in order; the recipe shifts labels itself (labels[1:] + ignore)."""
    windows = np.load(path).astype(np.int64)
    return [{"tokens": w.tolist(), "labels": w.tolist()} for w in windows]


class _NoTokenizer:
    pad_id = 0  # windows are all the same length: padded_collate_sft never pads


def no_tokenizer(**_):
    return _NoTokenizer()


def schedule_component(optimizer, num_training_steps: int, last_epoch: int = -1, lrs_file: str = "",
                       peak: float = 1.0):
    return schedule(optimizer, json.loads(Path(lrs_file).read_text()), peak, last_epoch)


def llama_kwargs(folder: str) -> dict:
    """torchtune.models.llama3_2 builder arguments for an HF Llama config (SmolLM2: plain RoPE, tied embeddings).
    scale_factor 1 makes Llama3ScaledRoPE the plain RoPE of HF Llama (every frequency is divided by 1)."""
    c = json.loads((Path(folder) / "config.json").read_text())
    if c.get("rope_scaling") not in (None, {}) or c.get("attention_bias") or c.get("mlp_bias"):
        raise SystemExit("torchtune llama3_2 builder: this config has rope_scaling or biases it does not model")
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    if head_dim != c["hidden_size"] // c["num_attention_heads"]:
        raise SystemExit("torchtune llama3_2 builder: head_dim != hidden_size / heads is not supported")
    return {"vocab_size": c["vocab_size"], "num_layers": c["num_hidden_layers"], "num_heads": c["num_attention_heads"],
            "num_kv_heads": c.get("num_key_value_heads", c["num_attention_heads"]), "embed_dim": c["hidden_size"],
            "max_seq_len": min(int(c.get("max_position_embeddings", 2048)), 2048),
            "intermediate_dim": c["intermediate_size"], "norm_eps": c["rms_norm_eps"],
            "rope_base": int(c.get("rope_theta", 10000)), "scale_factor": 1,
            "tie_word_embeddings": bool(c.get("tie_word_embeddings", False))}


def run_torchtune(job: dict, out: Path, lora: bool) -> dict:
    import torchao
    import torchtune
    from omegaconf import OmegaConf
    from torchtune import config as tt_config
    from torchtune import training

    # the recipe file `tune run knowledge_distillation_single_device` runs (its folder is not an importable package)
    import importlib.util

    path = Path(torchtune.__file__).resolve().parent.parent / "recipes" / "knowledge_distillation_single_device.py"
    spec = importlib.util.spec_from_file_location("tt_kd_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    KDRecipeSingleDevice = module.KDRecipeSingleDevice  # noqa: N806

    class FullKD(KDRecipeSingleDevice):
        """The recipe with the student's own weights trained instead of LoRA adapters: the recipe's loop, losses,
        data loader, optimizer/scheduler instantiation and HF checkpointer unchanged; only model setup (no
        adapters, no freezing) and the save (no LoRA merge) differ. torchtune 0.6.1 ships KD for LoRA students only."""

        def _setup_model(self, cfg_model, enable_activation_checkpointing, compile_model, base_model_state_dict,
                         lora_weights_state_dict=None):
            with training.set_default_dtype(self._dtype), self._device:
                model = tt_config.instantiate(cfg_model)
            model.load_state_dict(base_model_state_dict)  # strict: every student weight comes from the init folder
            return model

        def save_checkpoint(self, epoch: int) -> None:
            state = {k: v.cpu() for k, v in self._model.state_dict().items()}
            self._checkpointer.save_checkpoint({training.MODEL_KEY: state}, epoch=epoch,
                                               intermediate_checkpoint=False)

    lrs_file = out / "lrs.json"
    lrs_file.write_text(json.dumps(job["lrs"]))
    tt_out = out / "torchtune-out"
    me = "train_peer"
    student_model = {"_component_": "torchtune.models.llama3_2._component_builders.llama3_2",
                     **llama_kwargs(job["student_init"])}
    if lora:  # the shipped recipe's student: LoRA adapters (the recipe configs' rank 32 / alpha 64, all modules)
        student_model = {**student_model, "_component_": "torchtune.models.llama3_2._component_builders.lora_llama3_2",
                         "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
                         "apply_lora_to_mlp": True, "apply_lora_to_output": False, "lora_rank": 32, "lora_alpha": 64}

    def ckpt(folder: str) -> dict:
        return {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": folder,
                "checkpoint_files": sorted(p.name for p in Path(folder).glob("*.safetensors")),
                "recipe_checkpoint": None, "output_dir": str(tt_out), "model_type": "LLAMA3_2"}

    cfg = OmegaConf.create({
        "output_dir": str(tt_out),
        "model": student_model,
        "teacher_model": {"_component_": "torchtune.models.llama3_2._component_builders.llama3_2",
                          **llama_kwargs(job["teacher"])},
        "tokenizer": {"_component_": f"{me}.no_tokenizer"},
        "checkpointer": ckpt(job["student_init"]),
        "teacher_checkpointer": ckpt(job["teacher"]),
        "resume_from_checkpoint": False,
        "dataset": {"_component_": f"{me}.windows_dataset", "path": job["windows"], "packed": False},
        "seed": job["seed"], "shuffle": False, "batch_size": job["batch_size"],
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": job["lr"], "betas": list(job["betas"]),
                      "weight_decay": job["weight_decay"]},
        "lr_scheduler": {"_component_": f"{me}.schedule_component", "lrs_file": str(lrs_file), "peak": job["lr"]},
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "kd_loss": {"_component_": "torchtune.modules.loss.ForwardKLLoss"},
        "kd_ratio": job["alpha"],
        "epochs": 1, "max_steps_per_epoch": job["steps"], "gradient_accumulation_steps": 1,
        "clip_grad_norm": job["grad_clip"], "compile": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger", "log_dir": str(out / "logs")},
        "log_every_n_steps": 1, "log_peak_memory_stats": False,
        "device": job["device"], "dtype": "fp32",
        "enable_activation_checkpointing": False, "enable_activation_offloading": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    })
    recipe = (KDRecipeSingleDevice if lora else FullKD)(cfg=cfg)
    recipe.setup(cfg=cfg)
    saving = {"seconds": 0.0}
    save = recipe.save_checkpoint

    def timed_save(epoch):
        t = time.perf_counter()
        save(epoch)
        saving["seconds"] += time.perf_counter() - t

    recipe.save_checkpoint = timed_save
    t0 = time.perf_counter()
    recipe.train()
    train_s = time.perf_counter() - t0 - saving["seconds"]  # the loop alone: the end-of-epoch save is taken out
    recipe.cleanup()
    # torchtune's HF checkpointer writes tune_to_hf-converted safetensors under output_dir/epoch_0
    saved = sorted(p for p in tt_out.rglob("model-*.safetensors"))
    if not saved:
        raise SystemExit(f"torchtune wrote no model-*.safetensors under {tt_out}")
    dest = out / "student"
    dest.mkdir(parents=True, exist_ok=True)
    for p in saved:
        shutil.copy2(p, dest / p.name)
    shutil.copy2(Path(job["student_init"]) / "config.json", dest / "config.json")
    copy_tokenizer(Path(job["student_init"]), dest)
    curve = []
    for log in sorted((out / "logs").glob("*.txt")):
        for line in log.read_text().splitlines():  # DiskLogger: "Step N | key:value key:value ..."
            if line.startswith("Step "):
                step, _, rest = line.partition(" | ")
                row = {"step": int(step.split()[1])}
                for kv in rest.split():
                    k, _, v = kv.partition(":")
                    try:
                        row[k] = float(v)
                    except ValueError:
                        pass
                curve.append(row)
    trainable = sum(p.numel() for p in recipe._model.parameters() if p.requires_grad)
    return {"train_loop_seconds": train_s, "save_seconds": saving["seconds"], "steps_run": recipe.global_step,
            "trainable_parameters": trainable, "curve": curve,
            "versions": {"torchtune": torchtune.__version__, "torchao": torchao.__version__,
                         "torch": torch.__version__},
            "trainer": "recipes.knowledge_distillation_single_device.KDRecipeSingleDevice" +
                       (" as shipped (LoRA student)" if lora else
                        " with full-parameter student (model setup and save overridden; loop, losses unchanged)")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, choices=("trl", "torchtune", "torchtune_lora"))
    ap.add_argument("--job", required=True, type=Path)
    args = ap.parse_args()
    job = json.loads(args.job.read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(job["seed"])
    torch.set_num_threads(job.get("threads") or os.cpu_count() or 1)  # as edgedistil's distill stage does
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # torchtune instantiates this module's components
    if args.peer == "trl":
        record = run_trl(job, out)
    else:
        record = run_torchtune(job, out, lora=args.peer == "torchtune_lora")
    record["process_seconds"] = time.perf_counter() - T_START  # imports, loading, training, saving
    record["threads"] = torch.get_num_threads()
    (out / "peer_record.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
