"""Recipes, target profiles and budget files: every mistake is one clear line naming the file, key and fix."""

from pathlib import Path

import pytest

from edgedistil.config import MODELS_DIR, TARGETS, load_budget_file, load_recipe, load_target
from edgedistil.errors import EdgeError


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_recipes_and_profiles_load():
    for recipe in MODELS_DIR.glob("*.toml"):
        r = load_recipe(recipe)
        assert r.student.layers >= 1 and r.export.max_len > r.export.prefill_len
    for target in TARGETS:
        profile = load_target(target)
        assert profile.target == target and profile.budgets


def test_default_recipe_file_matches_builtin_defaults_except_name():
    # one source of truth: the file documents the defaults the code uses
    from_file, builtin = load_recipe(MODELS_DIR / "default.toml"), load_recipe(None)
    for section in ("teacher", "data", "student", "distill", "export", "eval", "bench"):
        assert from_file.section(section) == builtin.section(section), section


@pytest.mark.parametrize("text, expect", [
    ("[distill]\nalpah = 0.5\n", "unknown key 'alpah'; fix: did you mean 'alpha'?"),
    ("[distil]\nalpha = 0.5\n", "unknown key 'distil'; fix: did you mean 'distill'?"),
    ("[distill]\nalpha = 1.5\n", "'alpha' must be in [0, 1]"),
    ("[distill]\ntemperature = 0\n", "'temperature' must be > 0"),
    ("[distill]\nsteps = 'many'\n", "'steps' must be int, got str"),
    ("[distill]\nsteps = true\n", "'steps' must be int, got bool"),
    ("[student]\nlayers = 0\n", "'layers' must be >= 1"),
    ("[export]\nmax_len = 16\nprefill_len = 64\n", "'max_len' must be larger than prefill_len"),
    ("distill = 3\n", "must be a table"),
    ("[distill\nalpha = 0.5\n", "is not valid TOML"),
])
def test_recipe_errors_are_one_line(tmp_path, text, expect):
    with pytest.raises(EdgeError) as e:
        load_recipe(write(tmp_path, text))
    line = e.value.line()
    assert expect in line and "\n" not in line and str(tmp_path) in line


def test_recipe_int_accepted_for_float():
    r = load_recipe(None)
    assert isinstance(r.distill.alpha, float)


def test_missing_recipe(tmp_path):
    with pytest.raises(EdgeError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


def test_unknown_target_suggests():
    with pytest.raises(EdgeError, match="unknown target 'wbe'.*did you mean 'web'"):
        load_target("wbe")


@pytest.mark.parametrize("text, expect", [
    ("[budgets]\ndecode_tokens_per_s_min = 'fast'\n", "'decode_tokens_per_s_min' must be a number"),
    ("[budgets]\ndecode_tokens_per_s_min = true\n", "must be a number"),
    ("[budgets]\ndecode_tps_min = 3\n", "unknown key 'decode_tps_min'"),
    ("[limits]\nx = 1\n", "no [budgets] table"),
    ("[budgets]\nsize_mb_max = 1\n[extra]\n", "unknown key 'extra'"),
])
def test_budget_file_errors(tmp_path, text, expect):
    with pytest.raises(EdgeError) as e:
        load_budget_file(write(tmp_path, text, "b.toml"))
    assert expect in e.value.line()


def test_budget_file_reads_numbers(tmp_path):
    b = load_budget_file(write(tmp_path, "[budgets]\nsize_mb_max = 12\ntop1_agreement_min = 0.9\n", "b.toml"))
    assert b == {"size_mb_max": 12.0, "top1_agreement_min": 0.9}


@pytest.mark.parametrize("name, text, where", [
    ("recipe", "name = \"x\"\n\n[distill]\nsteps = 3\ntemprature = 2.0\n", ".toml:5 [distill]: unknown key 'temprature'"),
    ("recipe", "[export]\n# a comment\n  max_len = \"big\"\n", ".toml:3 [export]: 'max_len' must be int"),
    ("recipe", "[data]\nseq_len = 2\n", ".toml:2 [data]: 'seq_len' must be >= 8"),
    ("budgets", "[budgets]\ndecode_tokens_per_s_min = 1\nsize_mb = 3\n", ".toml:3 [budgets]: unknown key 'size_mb'"),
    ("budgets", "[budgets]\n\nsize_mb_max = \"small\"\n", ".toml:3 [budgets]: 'size_mb_max' must be a number"),
    ("profile", "target = \"web\"\nformat = \"onnx\"\nquantization = \"int8\"\nruntime = \"x\"\nthreds = 2\n",
     ".toml:5: unknown key 'threds'"),
])
def test_schema_errors_name_the_line(tmp_path, name, text, where):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    load = {"recipe": load_recipe, "budgets": load_budget_file, "profile": load_target}[name]
    with pytest.raises(EdgeError) as e:
        load(path)
    assert str(e.value.problem).startswith(str(path) + where.removeprefix(".toml"))


def test_fsdp_refuses_checkpoints(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[distill]\nparallel = \"fsdp\"\ncheckpoint_every = 10\n")
    with pytest.raises(EdgeError, match="cannot write resumable checkpoints yet"):
        load_recipe(path)
    path.write_text("[distill]\nparallel = \"zero3\"\n")
    with pytest.raises(EdgeError, match="must be \"ddp\" or \"fsdp\""):
        load_recipe(path)


def test_teacher_topk_is_accepted_beside_any_loss(tmp_path):
    # the cache applies to forward-KL response KD; other losses run the teacher live (train.py says so)
    path = tmp_path / "r.toml"
    path.write_text("[distill]\nteacher_topk = 32\nloss = \"reverse_kl\"\n")
    assert load_recipe(path).distill.loss == "reverse_kl"
    path.write_text("[distill]\nteacher_topk = 32\n")
    assert load_recipe(path).distill.teacher_topk == 32


def test_profile_naming_an_unknown_device_fails_at_its_line(tmp_path):
    p = write(tmp_path, 'target = "ios"\nformat = "mlpackage"\nquantization = "fp16"\nruntime = "Core ML"\n'
                        'device = "iphone-15-pr"\n', "p.toml")
    with pytest.raises(EdgeError) as e:
        load_target(p)
    assert "p.toml:5: unknown device 'iphone-15-pr'" in e.value.line() and "did you mean 'iphone-15-pro'" in e.value.line()


def test_profile_names_the_module_that_builds_it(tmp_path):
    from edgedistil.targets import target_of

    assert {load_target(t).module for t in TARGETS} <= {"web", "android", "ios", "onnx"}
    text = 'target = "web"\nformat = "onnx"\nquantization = "int8"\nruntime = "x"\nmodule = "wbe"\nhf_onnx = { q8 = "int8" }\n'
    with pytest.raises(EdgeError) as e:
        load_target(write(tmp_path, text, "p.toml"))
    assert "p.toml:5: no target module 'wbe'" in e.value.line() and "did you mean 'web'" in e.value.line()
    profile = load_target(write(tmp_path, text.replace('"wbe"', '"web"'), "p.toml"))
    assert target_of(profile).stages(profile, load_recipe(None))[-1].folder == "dist/web"
