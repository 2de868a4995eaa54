"""Fuzzing the config loader and the text path: any input ends in a result or an EdgeError, never a traceback."""

from __future__ import annotations

import string
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedistil.config import load_budget_file, load_recipe
from edgedistil.errors import EdgeError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SECTIONS = ["teacher", "data", "student", "distill", "export", "bench", "budgets", "distil", "x"]
KEYS = ["source", "corpus", "seq_len", "layers", "init", "alpha", "temperature", "steps", "lr", "max_len",
        "prefill_len", "repeats", "new_tokens", "device", "heldout_fraction", "size_mb_max", "nope"]
VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(string.printable, max_size=12), st.lists(st.integers(-3, 40), max_size=4))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


@st.composite
def recipes(draw) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from(SECTIONS), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True)):
            lines.append(f"{key} = {toml_value(draw(VALUES))}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=recipes())
def test_structured_recipes_load_or_fail_clearly(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    try:
        load_recipe(path)
    except EdgeError as e:
        assert "\n" not in e.line() and e.line()


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_as_recipe_or_budgets(tmp_path, data):
    path = tmp_path / "r.toml"
    path.write_bytes(data)
    for load in (load_recipe, load_budget_file):
        try:
            load(path)
        except EdgeError as e:
            assert "\n" not in e.line()


@FUZZ
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_as_a_corpus(tmp_path, data):
    from edgedistil.sources import text_file_corpus

    path = tmp_path / "c.txt"
    path.write_bytes(data)
    try:
        corpus = text_file_corpus(path)
    except EdgeError as e:
        assert "\n" not in e.line()
    else:
        assert corpus.text == data.decode("utf-8")


@FUZZ
@given(text=st.text(max_size=300))
def test_tokenize_any_text(tiny_tokenizer, text):
    from edgedistil.distill.data import tokenize

    ids = tokenize(tiny_tokenizer, text)
    assert ids.dtype.name == "int32" and (ids >= 0).all()
    # byte-level BPE round-trips every string; a literal "<|endoftext|>" in the text becomes that special token
    assert tiny_tokenizer.decode(ids.tolist(), skip_special_tokens=False) == text


def test_toml_helper_makes_valid_toml():
    quoted, nan = toml_value('x"y'), toml_value(float("nan"))
    assert tomllib.loads(f"a = {quoted}\nb = {nan}")["a"] == 'x"y'
