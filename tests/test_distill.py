"""The distillation losses and student design (unit tests, no training)."""

import math

import pytest
import torch

from edgedistil.config import StudentConfig
from edgedistil.distill.losses import FeatureKD, even_feature_map, kd_loss
from edgedistil.distill.student import build_student, even_layers
from edgedistil.errors import EdgeError
from edgedistil.model import EdgeConfig, EdgeLM


def logits(seed, shape=(2, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_is_plain_cross_entropy():
    s, t = logits(0), logits(1)
    labels = torch.randint(0, 11, (2, 5))
    loss, parts = kd_loss(s, t, labels, alpha=0.0, temperature=2.0)
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 11), labels.reshape(-1))
    assert math.isclose(float(loss), float(ce), rel_tol=1e-6)


def test_kl_is_zero_when_student_equals_teacher_and_scales_with_t_squared():
    s = logits(0)
    labels = torch.zeros(2, 5, dtype=torch.long)
    loss, parts = kd_loss(s, s.clone(), labels, alpha=1.0, temperature=3.0)
    assert abs(parts["kl"]) < 1e-6 and abs(float(loss)) < 1e-5
    t = logits(1)
    l2, p2 = kd_loss(s, t, labels, alpha=1.0, temperature=2.0)
    assert math.isclose(float(l2), 4.0 * p2["kl"], rel_tol=1e-5)


def test_kl_direction_is_teacher_to_student():
    # KL(p_t || p_s) computed by hand for one position
    s, t = logits(2, (1, 1, 7)), logits(3, (1, 1, 7))
    _, parts = kd_loss(s, t, torch.zeros(1, 1, dtype=torch.long), alpha=1.0, temperature=1.0)
    p_t, log_p_s, log_p_t = t.softmax(-1), s.log_softmax(-1), t.log_softmax(-1)
    assert math.isclose(parts["kl"], float((p_t * (log_p_t - log_p_s)).sum()), rel_tol=1e-5)


def test_even_layers_spans_first_to_last():
    assert even_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's pick
    assert even_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert even_layers(4, 1) == [0]
    with pytest.raises(EdgeError, match="only 4"):
        even_layers(4, 5)


def test_student_copies_teacher_layers():
    cfg = EdgeConfig(model_type="llama", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4,
                     tie_word_embeddings=True, attention_bias=False, max_position_embeddings=64)
    torch.manual_seed(0)
    teacher = EdgeLM(cfg, max_len=64)
    student, info = build_student(teacher, 3)
    picks = info["teacher_layers"]
    assert picks == [0, 2, 4] and student.cfg.num_hidden_layers == 3
    assert info["sliced"] == [] and info["random"] == []
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for i, src in enumerate(picks):
        name = "self_attn.q_proj.weight"
        assert torch.equal(s_sd[f"model.layers.{i}.{name}"], t_sd[f"model.layers.{src}.{name}"])
    assert torch.equal(s_sd["model.embed_tokens.weight"], t_sd["model.embed_tokens.weight"])
    assert student.lm_head.weight is student.model.embed_tokens.weight  # still tied, trained as one
    # a student with every layer is the teacher
    full, _ = build_student(teacher, 5)
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        assert torch.allclose(full(ids), teacher(ids))


# ---- the three divergences -------------------------------------------------------------------------------------


def by_hand(s, t, which, beta=0.5):
    """The divergences at T = 1 for one row, straight from their definitions."""
    p_s, p_t = s.softmax(-1), t.softmax(-1)
    kl = lambda p, q: float((p * (p.log() - q.log())).sum())  # noqa: E731
    if which == "forward_kl":
        return kl(p_t, p_s)
    if which == "reverse_kl":
        return kl(p_s, p_t)
    m = beta * p_s + (1 - beta) * p_t
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


@pytest.mark.parametrize("which", ["forward_kl", "reverse_kl", "jsd"])
def test_each_divergence_matches_its_definition_and_vanishes_at_equality(which):
    s, t = logits(4, (1, 1, 9)), logits(5, (1, 1, 9))
    labels = torch.zeros(1, 1, dtype=torch.long)
    _, parts = kd_loss(s, t, labels, alpha=1.0, temperature=1.0, loss=which, beta=0.3)
    assert math.isclose(parts["kl"], by_hand(s[0, 0], t[0, 0], which, beta=0.3), rel_tol=1e-4)
    _, same = kd_loss(s, s.clone(), labels, alpha=1.0, temperature=1.0, loss=which)
    assert abs(same["kl"]) < 1e-6


def test_reverse_kl_differs_from_forward_and_jsd_is_bounded():
    s, t = logits(6, (2, 3, 13)) * 3, logits(7, (2, 3, 13)) * 3
    labels = torch.zeros(2, 3, dtype=torch.long)
    f = kd_loss(s, t, labels, 1.0, 1.0, "forward_kl")[1]["kl"]
    r = kd_loss(s, t, labels, 1.0, 1.0, "reverse_kl")[1]["kl"]
    j = kd_loss(s, t, labels, 1.0, 1.0, "jsd", beta=0.5)[1]["kl"]
    assert abs(f - r) > 1e-3  # KL is not symmetric
    assert 0 < j <= math.log(2) + 1e-6  # the JSD is bounded by log 2


def test_reverse_kl_gradient_reaches_the_student():
    s = logits(8, (1, 4, 11)).requires_grad_(True)
    loss, _ = kd_loss(s, logits(9, (1, 4, 11)), torch.zeros(1, 4, dtype=torch.long), 1.0, 2.0, "reverse_kl")
    loss.backward()
    assert s.grad.abs().sum() > 0


# ---- hidden-state KD --------------------------------------------------------------------------------------------


def test_feature_map_is_even_and_ends_at_the_last_layer():
    assert even_feature_map(6, 30) == [5, 10, 15, 20, 25, 30]
    assert even_feature_map(2, 4) == [2, 4]
    assert even_feature_map(3, 3) == [1, 2, 3]


def test_feature_kd_projects_when_widths_differ_and_is_zero_on_a_match():
    torch.manual_seed(0)
    t_hidden = [torch.randn(2, 5, 16) for _ in range(5)]  # embeddings + 4 layers
    same = FeatureKD(16, 16, [2, 4], "mse")
    assert same.proj is None
    s_hidden = [t_hidden[0], t_hidden[2], t_hidden[4]]  # a student whose layers equal teacher layers 2 and 4
    assert float(same(s_hidden, t_hidden)) < 1e-12
    assert float(FeatureKD(16, 16, [1, 3], "mse")(s_hidden, t_hidden)) > 0.1  # the map matters
    assert float(FeatureKD(16, 16, [2, 4], "cosine")(s_hidden, t_hidden)) < 1e-6
    wide = FeatureKD(8, 16, [2, 4], "cosine")
    assert wide.proj is not None and wide.proj[0].weight.shape == (16, 8)
    loss = wide([torch.randn(2, 5, 8, requires_grad=True) for _ in range(3)], t_hidden)
    loss.backward()
    assert wide.proj[0].weight.grad.abs().sum() > 0  # the projection is learned


# ---- student design ---------------------------------------------------------------------------------------------


def small_teacher(layers=5, heads=4, kv=2, ffn=64):
    cfg = EdgeConfig(model_type="llama", vocab_size=50, hidden_size=32, intermediate_size=ffn, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4,
                     tie_word_embeddings=True, attention_bias=False, max_position_embeddings=64)
    torch.manual_seed(0)
    return EdgeLM(cfg, max_len=64)


def test_first_and_listed_layer_inits():
    teacher = small_teacher()
    t_sd = teacher.state_dict()
    for init, want in (("first", [0, 1, 2]), ([4, 0, 2], [4, 0, 2])):
        student, info = build_student(teacher, 3, init=init)
        assert info["teacher_layers"] == want
        for i, src in enumerate(want):
            assert torch.equal(student.state_dict()[f"model.layers.{i}.mlp.up_proj.weight"],
                               t_sd[f"model.layers.{src}.mlp.up_proj.weight"])
    with pytest.raises(EdgeError, match="teacher layer 7"):
        build_student(teacher, 2, init=[0, 7])


def test_random_init_copies_nothing():
    teacher = small_teacher()
    student, info = build_student(teacher, 2, init="random")
    assert info["teacher_layers"] is None and info["copied"] == [] and info["sliced"] == []
    assert not torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, torch.ones(32))
    assert student.lm_head.weight is student.model.embed_tokens.weight


def test_narrower_ffn_is_sliced_or_random_and_says_which():
    teacher = small_teacher()
    student, info = build_student(teacher, 2, intermediate_size=24, shrink_init="slice")
    assert student.cfg.intermediate_size == 24
    assert "model.layers.*.mlp.gate_proj.weight" in info["sliced"]
    assert "model.layers.*.mlp.down_proj.weight" in info["sliced"]
    assert "model.layers.*.self_attn.q_proj.weight" in info["copied"]
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.equal(s["model.layers.1.mlp.up_proj.weight"], t["model.layers.4.mlp.up_proj.weight"][:24])
    assert torch.equal(s["model.layers.1.mlp.down_proj.weight"], t["model.layers.4.mlp.down_proj.weight"][:, :24])
    _, rinfo = build_student(teacher, 2, intermediate_size=24, shrink_init="random")
    assert "model.layers.*.mlp.gate_proj.weight" in rinfo["random"] and rinfo["sliced"] == []
    with pytest.raises(EdgeError, match="wider"):
        build_student(teacher, 2, intermediate_size=128)


def test_fewer_heads_keep_whole_kv_groups_and_still_run():
    teacher = small_teacher(heads=4, kv=2)
    student, info = build_student(teacher, 2, heads=2)
    assert (info["heads"], info["kv_heads"]) == (2, 1)
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.equal(s["model.layers.0.self_attn.q_proj.weight"], t["model.layers.0.self_attn.q_proj.weight"][:16])
    assert torch.equal(s["model.layers.0.self_attn.k_proj.weight"], t["model.layers.0.self_attn.k_proj.weight"][:8])
    assert torch.equal(s["model.layers.0.self_attn.o_proj.weight"], t["model.layers.0.self_attn.o_proj.weight"][:, :16])
    ids = torch.randint(0, 50, (1, 7))
    with torch.no_grad():  # the narrower student is a working model: cached decode equals the full forward
        k, v = student.empty_cache(16)
        step_logits = student.step(ids.int(), torch.zeros(1, dtype=torch.int32), k, v)[0]
        assert torch.allclose(step_logits, student(ids), atol=1e-5)
    with pytest.raises(EdgeError, match="use one of 2, 4"):
        build_student(teacher, 2, heads=3)


# ---- training windows -------------------------------------------------------------------------------------------


def test_tokenize_documents_gives_each_documents_first_token(tiny_tokenizer):
    import numpy as np

    from edgedistil.distill.data import tokenize, tokenize_documents

    docs = ["In the beginning\nwas the word", "", "And the light\r\nshone", "last one"]
    ids, starts = tokenize_documents(tiny_tokenizer, docs)
    assert np.array_equal(ids, tokenize(tiny_tokenizer, "\n".join(docs)))  # the ids of the joined text, unchanged
    assert len(starts) == 4 and starts[0] == 0 and list(starts) == sorted(starts)
    for doc, a, b in zip(docs, starts, list(starts[1:]) + [len(ids)]):  # each span decodes to its document
        assert tiny_tokenizer.decode(ids[a:b].tolist()).rstrip("\n") == doc


def test_document_windows_start_at_document_starts():
    import numpy as np

    from edgedistil.distill.data import sample_blocks

    ids = np.arange(1000, dtype=np.int32)
    starts = np.array([0, 100, 250, 400, 990])  # 990 leaves too few tokens for a window: never drawn
    blocks = sample_blocks(ids, 64, 65, torch.Generator().manual_seed(0), starts)
    assert blocks.shape == (64, 65) and set(blocks[:, 0].tolist()) == {0, 100, 250, 400}
    assert torch.equal(blocks[:, 1:] - blocks[:, :-1], torch.ones(64, 64, dtype=torch.long))  # contiguous tokens
    anywhere = sample_blocks(ids, 64, 65, torch.Generator().manual_seed(0))
    assert len(set(anywhere[:, 0].tolist())) > 20  # without starts, windows begin anywhere


# ---- recipe keys ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("section,line,match", [
    ("distill", 'loss = "kl"', "'loss' must be one of forward_kl, reverse_kl, jsd"),
    ("distill", "beta = 1.0", "'beta' must be in"),
    ("distill", 'feature_loss = "l1"', "'feature_loss' must be one of mse, cosine"),
    ("distill", "feature_layers = [1]", "'feature_layers' must be"),
    ("distill", "grad_accum = 3", "'grad_accum' must be >= 1 and divide batch_size"),
    ("distill", 'method = "data"', "'method' must be one of response, sequence"),
    ("distill", 'precision = "fp16"', "'precision' must be auto, fp32 or bf16"),
    ("distill", "on_policy = 1.5", "'on_policy' must be in"),
    ("distill", 'on_policy = 0.5\nmethod = "sequence"', "'on_policy' must be 0 with method"),
    ("distill", "on_policy = 0.5\nalpha = 0.0", "'on_policy' must be 0 for CE-only"),
    ("distill", 'on_policy = 0.5\nparallel = "fsdp"', "'on_policy' must be 0 with parallel"),
    ("distill", "on_policy_temperature = -1", "'on_policy_temperature' must be >= 0"),
    ("distill", "unlikelihood = 1.0", "'unlikelihood' needs on-policy steps"),
    ("distill", "unlikelihood = -1.0\non_policy = 0.5", "'unlikelihood' must be >= 0"),
    ("distill", "unlikelihood_ngram = 1", "'unlikelihood_ngram' must be >= 2"),
    ("distill", "token_unlikelihood = -0.5", "'token_unlikelihood' must be >= 0"),
    ("distill", "token_unlikelihood_ngram = 0", "'token_unlikelihood_ngram' must be >= 1"),
    ("distill", 'train_head = "rows"', "'train_head' must be one of whole, kept"),
    ("distill", 'train_head = "kept"\n[student]\nhead_rows = 0', "'train_head' = 'kept' trains over a trimmed head"),
    ("distill", 'train_head = "kept"\non_policy = 0.5', "'train_head' = 'kept' cannot score on-policy samples"),
    ("distill", "teacher_correction_steps = -1", "'teacher_correction_steps' must be >= 0"),
    ("distill", "teacher_correction_lr = 0.0", "'teacher_correction_lr' must be > 0"),
    ("distill", 'teacher_correction_steps = 5\nparallel = "fsdp"', "'teacher_correction_steps' must be 0 with"),
    ("student", "init = [0]", f"'init' as a list must hold {StudentConfig.layers} "),  # the built-in count
    ("student", 'init = "last"', "'init' must be one of auto, greedy, block_influence, angular, even, first, random"),
    ("student", 'shrink_init = "zero"', "'shrink_init' must be one of importance, slice, random"),
    ("sequence", "top_p = 0", "'top_p' must be in"),
    ("data", 'windows = "aligned"', "'windows' must be one of random, documents"),
    ("data", "chat_no_repeat_ngram = -1", "'chat_no_repeat_ngram' must be >= 0"),
    ("sequence", "num_prompts = 0", "'num_prompts' must be >= 1"),
])
def test_new_recipe_keys_are_checked(tmp_path, section, line, match):
    from edgedistil.config import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(EdgeError, match=match):
        load_recipe(path)


def test_list_init_and_feature_layers_load(tmp_path):
    from edgedistil.config import load_recipe

    path = tmp_path / "r.toml"
    path.write_text("[student]\nlayers = 2\ninit = [0, 3]\n[distill]\nfeature_weight = 0.5\nfeature_layers = [2, 4]\n"
                    'loss = "jsd"\nbeta = 0.2\n[sequence]\ntemperature = 0\n')
    r = load_recipe(path)
    assert r.student.init == [0, 3] and r.distill.feature_layers == [2, 4] and r.distill.loss == "jsd"
