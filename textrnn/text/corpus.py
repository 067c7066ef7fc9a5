"""Corpora: the built-in registry, the cache directory, downloads, local files, split points.

A built-in corpus is looked up in the data directory (``$TEXTRNN_DATA_DIR``, else
``corpora/`` of a source checkout, else the user cache directory), downloaded from
its canonical URL when missing, verified against its SHA-1 and written atomically.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from textrnn.atomic import atomic_write
from textrnn.errors import TextrnnError


@dataclass(frozen=True)
class BuiltinCorpus:
    filename: str
    url: str
    sha1: str
    normalize: str  # the default normalization for this corpus
    description: str


BUILTIN = {
    "timemachine": BuiltinCorpus(
        filename="timemachine.txt",
        url="http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        sha1="090b5e7e70c295757f55df93cb0a180b9691891a",
        normalize="d2l",
        description="H. G. Wells, The Time Machine, the d2l book's copy (public domain)",
    ),
}


def data_dir() -> Path:
    """Where built-in corpora are cached."""
    if os.environ.get("TEXTRNN_DATA_DIR"):
        return Path(os.environ["TEXTRNN_DATA_DIR"]).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "corpora").is_dir():
        return checkout / "corpora"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "textrnn"


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_builtin(name: str, directory: Path | None = None) -> Path:
    """Return the verified local path of a built-in corpus, downloading it if needed."""
    corpus = BUILTIN[name]
    directory = Path(directory) if directory is not None else data_dir()
    path = directory / corpus.filename
    if not path.exists():
        _download(corpus, path)
    actual = sha1_of(path)
    if actual != corpus.sha1:
        raise TextrnnError(
            f"{path} has sha1 {actual}, expected {corpus.sha1} for corpus {name!r}: "
            f"delete it to download it again, or put the right file there"
        )
    return path


def _download(corpus: BuiltinCorpus, path: Path) -> None:
    hint = (
        f"put {corpus.filename} (sha1 {corpus.sha1}) in {path.parent}, "
        f"or set TEXTRNN_DATA_DIR to a directory that holds it"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(corpus.url, timeout=30) as response:
            payload = response.read()
    except OSError as error:
        raise TextrnnError(f"could not download {corpus.url} ({error}): {hint}") from error
    if hashlib.sha1(payload).hexdigest() != corpus.sha1:
        raise TextrnnError(f"the download from {corpus.url} failed its sha1 check: {hint}")
    atomic_write(path, payload)


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with one clear error for each way it can be unusable."""
    path = Path(path)
    if not path.exists():
        raise TextrnnError(
            f"{path} does not exist: give an existing UTF-8 text file or a built-in corpus ({', '.join(BUILTIN)})"
        )
    if path.is_dir():
        raise TextrnnError(f"{path} is a directory: give a UTF-8 text file")
    data = path.read_bytes()
    if not data:
        raise TextrnnError(f"{path} is empty: give a text file with some text in it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextrnnError(
            f"{path} is not valid UTF-8 (bad byte at offset {error.start}): convert it, e.g. iconv -t UTF-8"
        ) from None


def resolve(corpus: str, directory: Path | None = None) -> tuple[Path, str | None]:
    """Map ``--corpus`` (a built-in name or a path) to a file and its default normalization."""
    if corpus in BUILTIN:
        return fetch_builtin(corpus, directory), BUILTIN[corpus].normalize
    return Path(corpus), None


def split(length: int, val_fraction: float, test_fraction: float) -> tuple[slice, slice, slice]:
    """Contiguous train / validation / test slices of a stream, in that order."""
    val_start = int(round(length * (1.0 - val_fraction - test_fraction)))
    test_start = int(round(length * (1.0 - test_fraction)))
    return slice(0, val_start), slice(val_start, test_start), slice(test_start, length)
