"""The distill stage: teacher + corpus + recipe -> student HF folder, train.jsonl curve, eval.json and record.json.

One training loop serves the three flavours: response KD (soft labels: forward KL, reverse KL or JSD, plus CE),
with hidden-state KD added when feature_weight > 0, and sequence-level KD (CE on texts the teacher wrote). Before
any training, a pre-flight checks the tokenizers, estimates size and memory, and trial-exports the student. The
loop accumulates gradients, checkpoints every N steps for a bit-for-bit `--resume`, and runs under torchrun (DDP).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edgedistil.config import Recipe
from edgedistil.distill import correction, distributed, head, on_policy, teacher_cache
from edgedistil.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from edgedistil.distill.data import check_vocab, load_tokenizer, need_tokens, sample_blocks, tokenize, \
    tokenize_documents
from edgedistil.distill.evaluate import compare_on_heldout, eval_windows, student_only_quality
from edgedistil.distill.losses import FeatureKD, ce_loss, even_feature_map, kd_loss, token_unlikelihood
from edgedistil.distill.preflight import check_tokenizers, estimate, trial_export
from edgedistil.distill.sequence import read_prompts, teacher_texts
from edgedistil.distill.student import build_student, pick_layers, student_heads
from edgedistil.errors import EdgeError, atomic_dir, write_json
from edgedistil.model import EdgeLM, load_hf_folder, read_hf_config, save_hf_folder
from edgedistil.records import folder_fingerprint, stage_key
from edgedistil.sources import Corpus, split_corpus

# training tokens the student's probability mass is summed over to rank its output-head rows ([student] head_rows)
HEAD_RANK_TOKENS = 16_384


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16): there, autocast speeds a training step up
    (1.7x on the default student: docs/benchmarks.md, "Training precision"); elsewhere oneDNN emulates bf16."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to ask, so keep fp32
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def pick_device(want: str, precision: str) -> tuple[str, torch.dtype | None]:
    """The device and the autocast dtype. `auto` takes CUDA when there is a GPU, else the CPU; precision `auto`
    is bf16 autocast on CUDA and on a CPU with native bf16, fp32 elsewhere."""
    if want == "cuda" and not torch.cuda.is_available():
        raise EdgeError("[distill] device = 'cuda' but PyTorch sees no CUDA GPU", "set device = 'auto' or 'cpu'")
    device = "cuda" if want in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    bf16 = precision == "bf16" or (precision == "auto" and (device == "cuda" or cpu_has_bf16()))
    return device, torch.bfloat16 if bf16 else None


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainee(torch.nn.Module):
    """What the optimizer trains and DDP wraps: the student and, for hidden-state KD, its projections. With `rows`
    (a trimmed head's kept ids) the logits are those rows' alone, [.., K]: the student trains over the head it
    ships with."""

    def __init__(self, student: EdgeLM, feature: FeatureKD | None, rows: torch.Tensor | None = None):
        super().__init__()
        self.student, self.feature = student, feature
        self.register_buffer("rows", rows, persistent=False)

    def forward(self, inputs, teacher_hidden=None):
        hidden = self.student.hidden_states(inputs)
        if self.rows is None:
            logits = self.student.logits(hidden[-1])
        else:
            logits = F.linear(hidden[-1], self.student.lm_head.weight.index_select(0, self.rows))
        return logits, None if self.feature is None else self.feature(hidden, teacher_hidden)


MEASURED_INITS = ("auto", "greedy", "block_influence", "angular")
CALIBRATION_TOKENS = 256  # [data] seq_len windows (one of 192, four of 64): removal costs differ far more than this


def make_student(teacher: EdgeLM, teacher_dir: Path, recipe: Recipe, calib_ids: np.ndarray | None = None,
                 log=print) -> tuple[EdgeLM, Path, dict]:
    """The student (built from the teacher, or a ready HF folder), the folder its tokenizer comes from, and how
    it was made. A measured init ranks the teacher's layers (and, for a narrower student, its FFN neurons and KV
    groups) on `calib_ids`, calibration tokens from the training split."""
    from edgedistil.distill import prune

    s = recipe.student
    if s.source:
        folder = Path(s.source).expanduser()
        if not folder.is_dir():
            raise EdgeError(f"[student] source {folder} does not exist",
                            "pass an HF model folder, or \"\" to build the student from the teacher")
        student = load_hf_folder(folder, head="full").float()
        return student, folder, {"source": str(folder), "layers": student.cfg.num_hidden_layers,
                                 "init": "from the source folder"}
    init, ranking, width = s.init, None, None
    enough = calib_ids is not None and len(calib_ids) > recipe.data.seq_len
    windows = eval_windows(calib_ids, recipe.data.seq_len, CALIBRATION_TOKENS) if enough else None
    if isinstance(init, str) and init in MEASURED_INITS:
        need_tokens(calib_ids if calib_ids is not None else np.zeros(0), recipe.data.seq_len + 1, "training",
                    "the corpus")
        method = prune.AUTO_RANKING if init == "auto" else init
        ranking = prune.cached_ranking(teacher, teacher_dir, calib_ids, method, recipe.data.seq_len,
                                       CALIBRATION_TOKENS, log)
        init = prune.keep_layers(ranking, s.layers)
    picks = pick_layers(init, teacher.cfg.num_hidden_layers, s.layers)
    n_head, _ = student_heads(teacher.cfg, s.heads)
    narrower = (s.intermediate_size and s.intermediate_size < teacher.cfg.intermediate_size) or \
        n_head < teacher.cfg.num_attention_heads
    shrink = s.shrink_init
    if shrink == "importance":
        shrink = "slice"  # for whatever importance does not cover
        if narrower and picks is not None and windows is not None:
            imp = prune.width_importance(teacher, windows, picks)
            rep = teacher.cfg.num_attention_heads // teacher.cfg.num_key_value_heads
            width = {"ffn": [prune.top_indices(f, s.intermediate_size) for f in imp["ffn"]]
                     if s.intermediate_size and s.intermediate_size < teacher.cfg.intermediate_size else None,
                     "kv_groups": [prune.top_indices(g, n_head // rep) for g in imp["kv_groups"]]
                     if n_head < teacher.cfg.num_attention_heads else None}
    student, info = build_student(teacher, s.layers, init, s.intermediate_size, s.heads, shrink,
                                  seed=recipe.distill.seed, width=width)
    if ranking is not None:
        info["ranking"] = {k: v for k, v in ranking.items() if k != "block_start"}
    if width is not None:
        info["width"] = {k: None if v is None else [t.tolist() for t in v] for k, v in width.items()}
    return student, teacher_dir, {"source": "built from the teacher", "layers": s.layers, "init": s.init, **info}


def heldout_corpus_windows(tokenizer, corpus: Corpus, recipe: Recipe, log=print) -> tuple[Corpus, torch.Tensor] | None:
    """`[data] heldout_corpus`, a corpus the run never trains on, and its eval windows (None when unset, or when it
    is the training corpus itself)."""
    from edgedistil.sources import load_corpus

    spec = recipe.data.heldout_corpus
    if not spec:
        return None
    other = load_corpus(spec, log=log)
    if other.text == corpus.text:
        log(f"distill: [data] heldout_corpus {spec!r} is the training corpus; no out-of-domain figures")
        return None
    return other, eval_windows(tokenize(tokenizer, other.text[:200_000]), recipe.data.seq_len,
                               recipe.distill.eval_tokens)


def heldout_corpus_quality(student, teacher, other: tuple[Corpus, torch.Tensor] | None, device: str,
                           autocast) -> dict | None:
    """Student vs teacher on the held-out corpus `other` (heldout_corpus_windows)."""
    if other is None:
        return None
    other, windows = other
    with autocast:
        quality = compare_on_heldout(student, teacher, windows, device=device) if teacher is not None else \
            student_only_quality(student, windows, "the student's tokenizer is not the teacher's", device=device)
    return {"corpus": other.name, "source": other.source, **quality}


def head_record(student, kept: list[int], always: int, how: str, trained_over: str, heldout: torch.Tensor,
                other: tuple[Corpus, torch.Tensor] | None, folder: Path, log=print) -> dict:
    """Record the trimmed head in the saved student `folder`, and what the cut costs on held-out text (and on the
    held-out corpus `other`, heldout_corpus_windows), read from the whole head."""
    from edgedistil.model import write_head_rows

    t0 = time.perf_counter()
    device = next(student.parameters()).device  # where saving left it
    rows = len(kept)
    write_head_rows(folder, kept, student.cfg.vocab_size, how)
    record = {"rows": rows, "vocab_size": student.cfg.vocab_size, "always_kept": always, "ranked_by": how,
              "trained_over": trained_over, "heldout": head.cut_figures(student, heldout, kept, device)}
    if other is not None:
        record["heldout_corpus"] = {"corpus": other[0].name, **head.cut_figures(student, other[1], kept, device)}
    record["seconds"] = round(time.perf_counter() - t0, 2)
    h = record["heldout"]
    log(f"distill: head cut to {rows:,} of {student.cfg.vocab_size:,} rows: on held-out text the whole head's "
        f"top-1 is kept at {h['top1_agreement_with_whole_head']:.3f} of positions, {h['probability_kept']:.3f} "
        f"of its probability")
    return record


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), as the bench measures it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def local_batch(d, ddp) -> int:
    """One micro-batch of one process: the step's batch split over processes x grad_accum, or one clear error."""
    n = d.batch_size // (ddp.world * d.grad_accum)
    if n < 1 or d.batch_size % (ddp.world * d.grad_accum):
        raise EdgeError(f"[distill] batch_size {d.batch_size} does not split into {ddp.world} processes x "
                        f"{d.grad_accum} micro-batches", f"use a multiple of {ddp.world * d.grad_accum}")
    return n


def corrected_teacher(teacher_dir: Path, teacher_tok, train_docs: list[str], heldout_text: str, recipe: Recipe,
                      device: str, amp_dtype, ddp, log) -> Path:
    """The teacher fine-tuned on the training split ([distill] teacher_correction_steps), built once by rank 0 into
    the cache; what would make the run fail later is checked before the fine-tune starts."""
    d, data = recipe.distill, recipe.data
    check_vocab(teacher_tok, read_hf_config(teacher_dir).vocab_size, "the teacher")
    local_batch(d, ddp)
    folder = correction.corrected_folder(teacher_dir, "\n".join(train_docs), recipe, amp_dtype)
    if ddp.main and correction.load_record(folder) is None:
        ids, starts = tokenize_documents(teacher_tok, train_docs)
        heldout_ids = tokenize(teacher_tok, heldout_text)
        need_tokens(ids, data.seq_len + 1, "training", "the corpus")
        need_tokens(heldout_ids, data.seq_len + 1, "held-out", "the corpus")
        correction.correct_teacher(teacher_dir, ids, starts if data.windows == "documents" else None,
                                   eval_windows(heldout_ids, data.seq_len, d.eval_tokens), recipe, folder, device,
                                   torch.autocast(device.split(":")[0], dtype=amp_dtype,
                                                  enabled=amp_dtype is not None), log)
    distributed.barrier(ddp)
    if correction.load_record(folder) is None:
        raise EdgeError(f"the corrected teacher {folder} is not there for this process",
                        "put the edgedistil cache (EDGEDISTIL_CACHE) on storage every process sees")
    return folder


def run_key(teacher_dir: Path, corpus: Corpus, recipe: Recipe) -> str:
    """Identity of a run's inputs: a checkpoint resumes only a run with the same key."""
    import hashlib

    from edgedistil.distill import prune

    # a whole head (head_rows 0) leaves the key as it was before the field existed
    student = {k: v for k, v in recipe.section("student").items() if k != "head_rows" or v}
    # since 2026-12-08 a trimmed head's rows are the teacher's choice, made before training (whole-head keys unchanged)
    ranked = ("head rows chosen by the teacher before training",) if recipe.student.head_rows else ()
    return stage_key("distill-checkpoint", *ranked, recipe.section("data"), student,
                     prune.AUTO_RANKING if recipe.student.init == "auto" else None,
                     recipe.section("distill"), recipe.section("sequence"), folder_fingerprint(Path(teacher_dir)),
                     hashlib.sha256(corpus.text.encode()).hexdigest())


def run_distill(teacher_dir: Path, corpus: Corpus, recipe: Recipe, out_dir: Path, log=print,
                resume: bool = False) -> dict:
    """Distill a student from `teacher_dir` on `corpus`; rank 0 writes `out_dir` atomically; returns the record."""
    d, data = recipe.distill, recipe.data
    out_dir = Path(out_dir)
    device, amp_dtype = pick_device(d.device, d.precision)
    ddp = distributed.setup(device)
    if not ddp.main:
        log = lambda *_: None  # noqa: E731 - one voice in the log
    if device == "cuda" and ddp.active:
        device = f"cuda:{ddp.local_rank}"
    torch.manual_seed(d.seed)
    if device == "cpu" and not ddp.active:  # under torchrun each rank keeps the thread count torchrun gave it
        torch.set_num_threads(os.cpu_count() or 1)
    sequence = d.method == "sequence"

    # ---- pre-flight: everything that can fail fails here, before the first step ----
    t_pre = time.perf_counter()
    teacher_tok = load_tokenizer(teacher_dir)
    if not recipe.student.source:  # a student built from the teacher has its vocabulary: refuse a head it cannot cut
        head.check_rows(recipe.student.head_rows, len(head.always_kept(teacher_tok)),
                        read_hf_config(teacher_dir).vocab_size)
    train_docs, heldout_text = split_corpus(corpus, data.heldout_fraction)
    train_text = "\n".join(train_docs)
    corrected, given_teacher = None, Path(teacher_dir)
    if d.teacher_correction_steps:  # the teacher fine-tuned on the training split first (one-time, cached)
        teacher_dir = corrected_teacher(teacher_dir, teacher_tok, train_docs, heldout_text, recipe, device, amp_dtype,
                                        ddp, log)
        corrected = {**correction.load_record(teacher_dir), "folder": str(teacher_dir)}
    teacher = load_hf_folder(teacher_dir).eval().requires_grad_(False)
    check_vocab(teacher_tok, teacher.cfg.vocab_size, "the teacher")
    # calibration for a measured init: the start of the training split (never held-out text)
    calib_ids = tokenize(teacher_tok, train_text[:200_000]) if not recipe.student.source else None
    student, student_tok_dir, design = make_student(teacher, teacher_dir, recipe, calib_ids, log)
    student_tok = load_tokenizer(student_tok_dir)
    check_vocab(student_tok, student.cfg.vocab_size, "the student")
    if recipe.student.source:
        head.check_rows(recipe.student.head_rows, len(head.always_kept(student_tok)), student.cfg.vocab_size)
    try:
        tokenizers = check_tokenizers(teacher_tok, student_tok, teacher.cfg.vocab_size, student.cfg.vocab_size)
    except EdgeError:
        if not sequence:  # logit KD needs one vocabulary; sequence-level KD is the way around it
            raise
        tokenizers = None
    ce_only = sequence or (d.alpha == 0 and d.feature_weight == 0)  # then the teacher is not run while training
    sizes = estimate(student, None if ce_only else teacher, local_batch(d, ddp), data.seq_len)
    log(f"pre-flight: student {sizes['parameters'] / 1e6:.2f}M params ({sizes['fp32_mb']} MB fp32, "
        f"{sizes['int8_mb']} MB int8); training needs about {sizes['train_ram_mb']:.0f} MB of RAM")
    exported = trial_export(student, recipe.export.max_len, log) if d.preflight_export else None
    feature = None
    if d.feature_weight > 0 and not sequence:
        # a student built from teacher layers matches each of its layers to the one it was copied from
        kept = design.get("teacher_layers")
        layer_map = d.feature_layers or ([k + 1 for k in kept] if kept else
                                         even_feature_map(student.cfg.num_hidden_layers, teacher.cfg.num_hidden_layers))
        bad = [i for i in layer_map if not 1 <= i <= teacher.cfg.num_hidden_layers]
        if len(layer_map) != student.cfg.num_hidden_layers or bad:
            raise EdgeError(f"[distill] feature_layers {layer_map} must give one teacher hidden-state index in 1.."
                            f"{teacher.cfg.num_hidden_layers} per student layer ({student.cfg.num_hidden_layers})",
                            "fix feature_layers, or set it to [] (the teacher layers the student was built from)")
        feature = FeatureKD(student.cfg.hidden_size, teacher.cfg.hidden_size, layer_map, d.feature_loss)
    preflight_s = time.perf_counter() - t_pre

    # ---- data ----
    generation = None
    if sequence:
        prompts = read_prompts(recipe.sequence.prompts, tokenize(teacher_tok, train_text), teacher_tok,
                               recipe.sequence)
        seq_dir = out_dir.parent / f"{out_dir.name}-sequence"
        if ddp.main:  # one rank writes the teacher's texts; the others wait and read them
            teacher.to(device)
            teacher_texts(teacher, teacher_dir, teacher_tok, prompts, recipe.sequence, seq_dir, device, log)
        distributed.barrier(ddp)
        texts, generation = teacher_texts(teacher, teacher_dir, teacher_tok, prompts, recipe.sequence, seq_dir,
                                          device, lambda *_: None)
        train_docs = texts
    train_ids, doc_starts = tokenize_documents(student_tok, train_docs)
    heldout_ids = tokenize(student_tok, heldout_text)
    starts = doc_starts if data.windows == "documents" else None
    need_tokens(train_ids, data.seq_len + 1, "training", "the teacher's texts" if sequence else corpus.name)
    need_tokens(heldout_ids, data.seq_len + 1, "held-out", corpus.name)
    cache, cache_info = None, None
    # the cache holds top-k logits only: hidden states, reverse KL and JSD need the live teacher's whole output
    cache_fits = d.loss == "forward_kl" and feature is None and not ce_only
    if d.teacher_topk and not ce_only and not cache_fits:
        log(f"distill: the teacher runs live: its top-{d.teacher_topk} logits cache serves forward-KL response KD "
            f"on logits only (loss = {d.loss!r}, feature_weight = {d.feature_weight})")
    if d.teacher_topk and cache_fits:  # the teacher's top-k logits, computed once and reused
        identity = teacher_cache.cache_identity(folder_fingerprint(Path(teacher_dir)), corpus.text, recipe)
        cache_dir = Path(d.teacher_cache).expanduser() if d.teacher_cache else teacher_cache.shared_folder(identity)
        built_s = None
        if ddp.main and teacher_cache.load_cache(cache_dir, identity) is None:
            t_build = time.perf_counter()
            teacher_cache.build_cache(teacher, train_ids, starts, identity, cache_dir, device, log)
            built_s = round(time.perf_counter() - t_build, 2)
        distributed.barrier(ddp)
        cache = teacher_cache.load_cache(cache_dir, identity)
        cache_info = {**teacher_cache.describe(cache, cache_dir), "built_seconds": built_s}  # None: reused
        log(f"distill: training from the teacher's top-{d.teacher_topk} logits in {cache_dir} (the teacher is "
            f"not run while training{', except to score the on-policy samples' if d.on_policy else ''})")
        if d.temperature > 1:  # docs/benchmarks.md: top-32 at T 2 reached perplexity 348, at T 1 115
            log(f"distill: note: top-k KD at T = {d.temperature} measured far worse than at T = 1 on the default "
                f"(the renormalized top-k teacher at high T pulls the student's mass into k tokens); consider "
                f"temperature = 1.0")
    autocast = torch.autocast(device.split(":")[0], dtype=amp_dtype, enabled=amp_dtype is not None)
    head_ids = head_how = train_rows = row_of = None
    if recipe.student.head_rows:  # the trimmed head's rows, chosen before training ([distill] train_head may use them)
        base = head.always_kept(student_tok)
        if cache is not None:  # the teacher's probability over the training windows, free from its top-k cache
            mass = head.teacher_topk_mass(cache["ids"], cache["logits"], student.cfg.vocab_size)
            head_how = (f"the teacher's softmax over its cached top-{cache['ids'].shape[-1]} logits, summed over the "
                        f"{cache['ids'][..., 0].numel():,} positions of the training windows")
        else:
            ranked = eval_windows(train_ids, data.seq_len, HEAD_RANK_TOKENS)
            model, whose = (teacher, "teacher") if tokenizers is not None else (student, "student as built")
            with autocast:
                mass = head.probability_mass(model.to(device), ranked, device)
            head_how = f"the {whose}'s softmax summed over {ranked.numel():,} training tokens"
        head_ids = head.rank_rows(mass, base, recipe.student.head_rows)
        head_how += f"; the {len(base)} one-character and special tokens always kept"
        if d.train_head == "kept":
            train_rows = torch.as_tensor(head_ids, device=device)
            row_of = head.row_index(head_ids, student.cfg.vocab_size, teacher_cache.IGNORE).to(device)
    flavour = ("sequence-level KD (CE on teacher texts)" if sequence else
               "CE only" if ce_only else f"response KD ({d.loss})" + (" + hidden states" if feature else "") +
               (f", {d.on_policy:.0%} of steps on-policy" if d.on_policy else "") +
               (f" with unlikelihood on repeated {d.unlikelihood_ngram}-grams" if d.unlikelihood else "") +
               (f", token-level unlikelihood on {d.token_unlikelihood_ngram}-gram repeats"
                if d.token_unlikelihood else ""))
    n_teacher = sum(p.numel() for p in teacher.parameters())
    log(f"distill: {flavour}; teacher {n_teacher / 1e6:.1f}M params -> student "
        f"{sizes['parameters'] / 1e6:.1f}M params, layers {design.get('teacher_layers', design['source'])}; "
        f"{len(train_ids):,} train / {len(heldout_ids):,} held-out tokens; device {device}"
        f"{' bf16' if amp_dtype else ''}{f', {ddp.world} processes' if ddp.active else ''}")

    # ---- training ----
    teacher.to(device)
    net = Trainee(student, feature, train_rows).to(device).train()
    model = net
    fsdp = ddp.active and d.parallel == "fsdp"
    if fsdp:
        distributed.shard(net, student.model.layers)
        if not ce_only and cache is None:
            distributed.shard(teacher, teacher.model.layers)
    elif ddp.active:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[ddp.local_rank] if device != "cpu"
                                                          else None)
    if d.freeze_embeddings and design.get("init") == "random":
        log("distill: the token embedding trains after all: a random init has no teacher embedding to keep")
    elif d.freeze_embeddings:  # a tied LM head is the same tensor, so it stays the teacher's too
        student.model.embed_tokens.weight.requires_grad_(False)
    trained = [p for p in net.parameters() if p.requires_grad]
    # the fused kernel makes the step one pass over the weights (a fifth of a CPU step before); FSDP's sharded
    # parameters keep the default implementation
    opt = torch.optim.AdamW(trained, lr=d.lr, weight_decay=d.weight_decay, betas=(0.9, 0.95), fused=not fsdp)
    sampler = torch.Generator().manual_seed(d.seed)
    key = run_key(teacher_dir, corpus, recipe)
    ckpt_dir = out_dir.parent / f"{out_dir.name}-checkpoints"
    start, curve, tokens_seen, seconds_before = 0, [], 0, 0.0
    resumed_from = None
    if resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            log(f"distill: --resume found no checkpoint in {ckpt_dir}; starting from step 0")
        else:
            state = load_checkpoint(path, net, opt, sampler, key)
            start, curve = state["step"], state["curve"]
            tokens_seen, seconds_before = state["tokens"], state["seconds"]
            resumed_from = str(path)
            log(f"distill: resuming from {path} at step {start}/{d.steps}")

    sampling = None
    if d.on_policy:  # the student's samples come from a transformers twin that shares its weights
        sampling = on_policy.mirror(student), *on_policy.chat_ids(student_tok_dir)

    def on_policy_step_loss(x: torch.Tensor, sampled: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = x[:, :-1]
        with autocast:
            with torch.no_grad():
                t_out = teacher(inputs, output_hidden_states=feature is not None)
            t_logits, t_hidden = t_out if feature is not None else (t_out, None)
            s_logits, f_loss = model(inputs, t_hidden)
        loops = on_policy.loop_tokens(x, sampled, d.unlikelihood_ngram) if d.unlikelihood else None
        loss, parts = on_policy.on_policy_loss(s_logits, t_logits, sampled, d.temperature, d.loss, d.beta,
                                               x[:, 1:], loops, d.unlikelihood)
        if f_loss is not None:
            loss = loss + d.feature_weight * f_loss
            parts.update(feature=f_loss.item(), loss=loss.item())
        return loss, parts

    def step_loss(x: torch.Tensor, top=None) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(top, torch.Tensor):  # an on-policy micro-batch: `top` is its mask of sampled tokens
            return on_policy_step_loss(x, top)
        inputs, labels = x[:, :-1], x[:, 1:]
        # over a trimmed head's rows, ids are rows, and an id outside them is IGNORE
        targets = labels if row_of is None else row_of[labels]
        f_loss = None
        if top is not None:  # from the teacher cache
            with autocast:
                s_logits, _ = model(inputs)
            t_ids = top[0] if row_of is None else row_of[top[0]]
            loss, parts = teacher_cache.topk_kd_loss(s_logits, t_ids, top[1], targets, d.alpha, d.temperature)
        else:
            with autocast:
                t_logits = t_hidden = None
                if not ce_only:
                    with torch.no_grad():
                        t_out = teacher(inputs, output_hidden_states=feature is not None)
                    t_logits, t_hidden = t_out if feature is not None else (t_out, None)
                    if train_rows is not None:
                        t_logits = t_logits.index_select(-1, train_rows)
                s_logits, f_loss = model(inputs, t_hidden)
            if ce_only:
                loss, parts = ce_loss(s_logits, targets)
            else:
                loss, parts = kd_loss(s_logits, t_logits, targets, d.alpha, d.temperature, d.loss, d.beta)
        if f_loss is not None:
            loss = loss + d.feature_weight * f_loss
            parts.update(feature=f_loss.item(), loss=loss.item())
        if d.token_unlikelihood:
            ul, candidates = token_unlikelihood(s_logits, inputs, labels, d.token_unlikelihood_ngram, row_of)
            loss = loss + d.token_unlikelihood * ul
            parts.update(token_unlikelihood=ul.item(), ul_candidates=candidates, loss=loss.item())
        return loss, parts

    # a live bar on a terminal; in logs (CI, pipes) a plain line every tenth of the run instead
    bar = tqdm(range(start, d.steps), initial=start, total=d.steps, desc="distill", unit="step", dynamic_ncols=True,
               mininterval=1.0, disable=not (sys.stderr.isatty() and ddp.main))
    every = max(1, d.steps // 10)
    t0 = time.perf_counter()
    for step in bar:
        lr = lr_at(step, d.steps, d.warmup_steps, d.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        # every rank draws the same global batch from the same generator, then takes its rows: the data order
        # does not depend on the number of processes
        if cache is None:
            x = distributed.local_rows(sample_blocks(train_ids, d.batch_size, data.seq_len + 1, sampler, starts),
                                        ddp)
            tops = [None] * d.grad_accum
        else:
            x, t_ids, t_logits = (distributed.local_rows(t, ddp) for t in
                                  teacher_cache.cached_batch(cache, step, d.batch_size, d.seed))
            tops = list(zip(t_ids.to(device).chunk(d.grad_accum), t_logits.to(device).chunk(d.grad_accum)))
        opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        micro = x.to(device).chunk(d.grad_accum)
        sampled_step = on_policy.is_on_policy(step, d.on_policy)
        if sampled_step:  # the student answers each window's prompt; the teacher scores the answer live
            model.eval()
            with autocast:
                x, sampled = on_policy.student_samples(sampling[0], x.to(device), sampling[1], d.on_policy_tokens,
                                                       d.on_policy_temperature, sampling[2], sampling[3],
                                                       seed=d.seed * 1_000_003 + step)
            model.train()
            micro, tops = x.chunk(d.grad_accum), list(sampled.chunk(d.grad_accum))
        for i, (mb, top) in enumerate(zip(micro, tops)):
            sync = i == len(micro) - 1 or not ddp.active  # gradients are reduced on the last micro-batch only
            if fsdp:
                net.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or fsdp else model.no_sync():
                loss, parts = step_loss(mb, top)
                (loss / d.grad_accum).backward()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / d.grad_accum
        parts = distributed.mean_over_ranks(sums, ddp)
        for k in ("sampled_tokens", "loop_tokens"):  # counts of the whole step, not means over its micro-batches
            if k in parts:
                parts[k] *= d.grad_accum * ddp.world
        if not math.isfinite(parts["loss"]):
            raise EdgeError(f"the distillation loss became {parts['loss']} at step {step}",
                            "lower [distill] lr or raise warmup_steps in the recipe")
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, d.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP
        opt.step()
        tokens_seen += d.batch_size * data.seq_len
        elapsed = seconds_before + time.perf_counter() - t0
        curve.append({"step": step, "lr": lr, **parts, "grad_norm": grad_norm, "tokens": tokens_seen,
                      "seconds": round(elapsed, 3), **({"on_policy": sampled_step} if d.on_policy else {})})
        tok_s = (step + 1 - start) * d.batch_size * data.seq_len / (time.perf_counter() - t0)
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items() if k != "loss"} | {"loss": f"{parts['loss']:.3f}",
                                                                                    "tok/s": f"{tok_s:.0f}"})
        if bar.disable and ((step + 1) % every == 0 or step + 1 == d.steps):
            eta = (time.perf_counter() - t0) / (step + 1 - start) * (d.steps - step - 1)
            shown = " ".join(f"{k} {v:.3f}" for k, v in parts.items())
            log(f"distill: step {step + 1}/{d.steps} {shown} {tok_s:.0f} tok/s, ETA {eta:.0f} s")
        if d.checkpoint_every and (step + 1) % d.checkpoint_every == 0 and step + 1 < d.steps:
            if ddp.main:
                save_checkpoint(ckpt_dir, step + 1, net, opt, sampler,
                                {"key": key, "curve": curve, "tokens": tokens_seen, "seconds": elapsed})
            distributed.barrier(ddp)
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - t0
    tokens_per_s = (d.steps - start) * d.batch_size * data.seq_len / max(time.perf_counter() - t0, 1e-9)

    if fsdp:  # gather the sharded student for rank 0; reload the teacher there to evaluate against
        weights = distributed.full_state_dict(net.student)
        if ddp.main:
            student = type(student)(student.cfg, max_len=student.max_len).to(device)
            student.load_state_dict(weights)
            teacher = load_hf_folder(teacher_dir).eval().requires_grad_(False).to(device)
        del weights
    if not ddp.main:  # rank 0 evaluates and writes; the others are done
        distributed.barrier(ddp)
        distributed.teardown(ddp)
        return {"stage": "distill", "rank": ddp.rank, "quality": None}

    with atomic_dir(out_dir) as tmp:
        (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        student.eval()
        windows = eval_windows(heldout_ids, data.seq_len, d.eval_tokens)
        # on the CPU the figures are the fp32 student's, as it ships, whatever precision trained it
        eval_autocast = autocast if device.startswith("cuda") else contextlib.nullcontext()
        with eval_autocast:
            if tokenizers is None:
                quality = student_only_quality(student, windows, "the student's tokenizer is not the teacher's, "
                                               "so per-token teacher figures would count other tokens",
                                               device=device)
            else:
                quality = compare_on_heldout(student, teacher, windows, device=device)
        other = heldout_corpus_windows(student_tok, corpus, recipe, log)
        other_quality = heldout_corpus_quality(student, teacher if tokenizers is not None else None, other, device,
                                               eval_autocast)
        if other_quality is not None:
            quality["heldout_corpus"] = other_quality
        write_json(tmp / "eval.json", quality)
        if quality["teacher_perplexity"] is not None:
            log(f"distill: held-out perplexity student {quality['student_perplexity']:.2f} vs teacher "
                f"{quality['teacher_perplexity']:.2f}, top-1 agreement {quality['top1_agreement_with_teacher']:.3f}")
        else:
            log(f"distill: held-out perplexity student {quality['student_perplexity']:.2f} (own tokenizer)")

        save_hf_folder(student.to("cpu").float(), tmp / "student", tokenizer_from=student_tok_dir)
        trained_over = f"the {len(head_ids):,} kept rows" if train_rows is not None else "the whole vocabulary"
        trimmed = head_record(student, head_ids, len(base), head_how, trained_over, windows, other, tmp / "student",
                              log) if head_ids else None
        (tmp / "heldout.txt").write_text(heldout_text, encoding="utf-8")
        record = {
            "stage": "distill",
            "method": "sequence" if sequence else "response",
            "flavour": flavour,
            "teacher": str(given_teacher),  # the teacher as given; a corrected one is in teacher_correction
            "corpus": {"name": corpus.name, "source": corpus.source, "license": corpus.license,
                       "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(heldout_ids))},
            "student": {**design, "parameters": sizes["parameters"]},
            "teacher_parameters": n_teacher,
            "preflight": {"seconds": round(preflight_s, 2), "tokenizers": tokenizers, "estimate": sizes,
                          "trial_export": exported if exported else
                          {"skipped": "[distill] preflight_export = false"}},
            "feature_kd": {"teacher_hidden_states": feature.teacher_index, "loss": d.feature_loss,
                           "projection": feature.proj is not None} if feature else None,
            "sequence_kd": generation,
            "config": recipe.section("distill"),
            "device": device + (" bf16 autocast" if amp_dtype else " fp32"),
            "processes": ddp.world,
            "teacher_cache": cache_info,
            "teacher_correction": corrected,
            "on_policy": {"share": d.on_policy, "steps": sum(1 for r in curve if r.get("on_policy")),
                          "sampled_tokens": int(sum(r.get("sampled_tokens", 0) for r in curve if r.get("on_policy"))),
                          "tokens_per_answer": d.on_policy_tokens, "temperature": d.on_policy_temperature,
                          "unlikelihood": {"weight": d.unlikelihood, "ngram": d.unlikelihood_ngram,
                                           "loop_tokens": int(sum(r.get("loop_tokens", 0) for r in curve))}
                          if d.unlikelihood else None}
            if d.on_policy else None,
            "parallel": ("fsdp: student and teacher layers sharded" if fsdp else "ddp") if ddp.active else None,
            "resumed_from": resumed_from,
            "train_seconds": round(train_seconds, 2),
            "train_tokens_per_s": round(tokens_per_s, 1),
            "peak_rss_mb": peak_rss_mb(),
            "final_loss": curve[-1]["loss"],
            "quality": quality,
            "head": trimmed,
            # which teacher the held-out teacher figures above are: the one that taught
            "quality_teacher": "corrected (teacher_correction.folder)" if corrected else "the teacher as given",
        }
        write_json(tmp / "record.json", record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is complete: nothing left to resume
    distributed.barrier(ddp)
    distributed.teardown(ddp)
    return record
