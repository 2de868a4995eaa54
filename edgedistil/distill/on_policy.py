"""On-policy distillation (GKD, Agarwal et al. 2024): on a share of the steps the student writes the answers it
learns from, and the teacher scores every token of them.

Off-policy KD only ever shows the student the teacher's own text, so it never learns what to do once its own greedy
decoding has drifted into a state the teacher would not reach, such as a phrase repeated twice: that is where the
default student's loops come from (docs/quality.md). On an on-policy step each training window is cut after its
first assistant header (the chat template's generation prompt; a window without one is cut in half), the student
samples a continuation from that prompt, and the loss is the recipe's divergence between teacher and student on
the sampled tokens only (there is no ground-truth token to add CE on).

The student samples through a transformers model that shares its weight tensors, so each sample sees the weights
of that very step with HF's KV-cache batched generation, at no copy.

The teacher is no guide inside a loop: given a student answer that has started repeating itself, its own greedy
token continues the repetition more often than before it (scripts/bench_loop_states.py). With `unlikelihood > 0`
the tokens of every n-gram that repeats within the student's answer are taken away from the teacher's divergence
and pushed down instead, by sequence-level unlikelihood, -log(1 - p(token)) (Welleck et al. 2020).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgedistil.distill.losses import divergence


def is_on_policy(step: int, share: float) -> bool:
    """Whether `step` is an on-policy one: `share` of the steps, spread evenly and fixed by the step number (so a
    resumed run makes the same choice)."""
    return share > 0 and math.floor((step + 1) * share) > math.floor(step * share)


def chat_ids(tokenizer_dir) -> tuple[list[int] | None, int, int]:
    """The token ids of the chat template's generation prompt (`<|im_start|>assistant\\n` for ChatML; None
    without a chat template), the end-of-turn id a sample stops at, and the padding id."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if not getattr(tok, "chat_template", None):
        return None, eos, pad
    user = [{"role": "user", "content": "\x00"}]
    bare = tok.apply_chat_template(user, tokenize=False)
    with_prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    header = with_prompt[len(bare):] if with_prompt.startswith(bare) else ""
    ids = tok(header, add_special_tokens=False).input_ids if header else []
    return ids or None, eos, pad


def prompt_length(row: list[int], header: list[int] | None, room: int) -> int:
    """Where a training window's prompt ends: after its first assistant header, or halfway without one; at most
    len(row) - room, so that `room` tokens can follow it."""
    cut = len(row) // 2
    if header:
        n = len(header)
        for i in range(len(row) - n + 1):
            if row[i:i + n] == header:
                cut = i + n
                break
    return max(1, min(cut, len(row) - room))


def mirror(student) -> torch.nn.Module:
    """A transformers causal LM whose parameters are the student's own tensors (no copy): it generates with the
    weights of the current step."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**student.cfg.to_hf_dict())
    model = AutoModelForCausalLM.from_config(config).to(student.model.embed_tokens.weight.device)
    model.load_state_dict(student.state_dict(), assign=True, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def student_samples(model, windows: torch.Tensor, header: list[int] | None, new_tokens: int, temperature: float,
                    eos_id: int, pad_id: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's continuations of each window's prompt (greedy at temperature 0): ids [B, L] (prompt + sample,
    right-padded) and the loss mask [B, L - 1], True where the position predicts a sampled token (the end of turn
    included)."""
    rows = windows.tolist()
    room = min(new_tokens, max(1, len(rows[0]) // 2))
    prompts = [r[:prompt_length(r, header, room)] for r in rows]
    width = max(len(p) for p in prompts)
    device = windows.device
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)  # left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    out = model.generate(input_ids=ids, attention_mask=mask, **sampling,
                         max_new_tokens=min(new_tokens, len(rows[0]) - width), eos_token_id=eos_id, pad_token_id=pad_id)
    seqs, spans = [], []
    for p, sample in zip(prompts, out[:, width:].tolist()):
        if eos_id in sample:
            sample = sample[:sample.index(eos_id) + 1]
        seqs.append(p + sample)
        spans.append((len(p), len(p) + len(sample)))
    length = max(len(s) for s in seqs)
    batch = torch.tensor([s + [pad_id] * (length - len(s)) for s in seqs], device=device)
    target = torch.arange(1, length, device=device)[None, :]  # position j predicts token j + 1
    lo = torch.tensor([a for a, _ in spans], device=device)[:, None]
    hi = torch.tensor([b for _, b in spans], device=device)[:, None]
    return batch, (target >= lo) & (target < hi)


def loop_tokens(ids: torch.Tensor, loss_mask: torch.Tensor, n: int) -> torch.Tensor:
    """[B, L - 1], True where a position predicts a token of an n-gram that already occurred earlier in the same
    sampled answer (every token of each repeat, as Welleck et al. mark them); the prompt is not searched, so an
    answer may quote it."""
    marks = torch.zeros_like(loss_mask)
    for b, (row, m) in enumerate(zip(ids.tolist(), loss_mask.tolist())):
        positions = [j for j, on in enumerate(m) if on]  # position j predicts token j + 1
        answer = [row[j + 1] for j in positions]
        seen = set()
        for i in range(len(answer) - n + 1):
            gram = tuple(answer[i:i + n])
            if gram in seen:
                for j in positions[i:i + n]:
                    marks[b, j] = True
            seen.add(gram)
    return marks


def on_policy_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, loss_mask: torch.Tensor,
                   temperature: float, loss: str, beta: float, targets: torch.Tensor | None = None,
                   loops: torch.Tensor | None = None, unlikelihood: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """T^2 x the recipe's divergence (teacher, student) on the sampled tokens, averaged over them. With `loops` (a
    mask inside `loss_mask`) and `targets` (the token each position predicts), the loop tokens get
    `unlikelihood` x -log(1 - p_student(target)) instead of the divergence, in the same average."""
    loops = torch.zeros_like(loss_mask) if loops is None or not unlikelihood else loops & loss_mask
    scored = loss_mask & ~loops
    count = float(loss_mask.sum().clamp(min=1))
    s = student_logits.float()
    div = s.new_zeros(())
    if scored.any():
        div = divergence(F.log_softmax(s[scored] / temperature, dim=-1),
                         F.log_softmax(teacher_logits.float()[scored] / temperature, dim=-1), loss, beta)
    total = temperature**2 * div * (float(scored.sum()) / count)
    parts = {"kl": div.item(), "sampled_tokens": float(loss_mask.sum())}
    if loops.any():
        p = F.log_softmax(s[loops], dim=-1).gather(-1, targets[loops][:, None]).squeeze(-1).exp()
        ul = -torch.log1p(-p.clamp(max=1 - 1e-6))
        total = total + unlikelihood * ul.sum() / count
        parts.update(unlikelihood=ul.mean().item(), loop_tokens=float(loops.sum()))
    elif unlikelihood:
        parts.update(unlikelihood=0.0, loop_tokens=0.0)
    return total, {"loss": total.item(), **parts}
