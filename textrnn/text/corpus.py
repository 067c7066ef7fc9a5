"""Corpora: the built-in registry, the cache directory, downloads, local files, folders of files, split points.

A built-in corpus is looked up in the data directory (``$TEXTRNN_DATA_DIR``, else
``corpora/`` of a source checkout, else the user cache directory), downloaded from
its canonical URL when missing, verified against its SHA-1 and written atomically.

A corpus of several documents (``--corpus`` given more than once, or a directory) is
``collect``ed: directories are walked recursively in sorted order, ``--glob`` picks the
files, hidden files, binary files (a NUL byte in their first 8 KB) and empty files are
skipped and counted, and a file that is not UTF-8 is named with the offset of its first
bad byte.
"""

from __future__ import annotations

import fnmatch
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


def is_collection(corpus) -> bool:
    """Whether ``corpus`` (``TrainConfig.corpus``) names several documents: several paths, or a directory."""
    if isinstance(corpus, tuple | list):
        return True
    return corpus not in BUILTIN and Path(corpus).is_dir()


@dataclass(frozen=True)
class Document:
    path: Path  # absolute, or the built-in corpus's file
    text: str
    sha1: str


BINARY_PROBE = 8192  # bytes looked at for a NUL, like git's binary check


def collect(corpus, pattern: str | None = None, directory: Path | None = None) -> tuple[list[Document], dict]:
    """The documents of a corpus of several paths (built-in names, files, directories): ``(documents, skipped)``
    where ``skipped`` counts the ``hidden``, ``binary`` and ``empty`` files left out. ``pattern`` (``--glob``)
    picks the files of a directory by name (``*.txt``) or, with a ``/`` in it, by path below the directory."""
    entries = [corpus] if isinstance(corpus, str) else list(corpus)
    documents, skipped = [], {"hidden": 0, "binary": 0, "empty": 0}
    for entry in entries:
        if entry in BUILTIN:
            path = fetch_builtin(entry, directory)
            documents.append(Document(path, read_text(path), sha1_of(path)))
            continue
        root = Path(entry)
        if not root.exists():
            read_text(root)  # the error of a missing file
        files = [root] if root.is_file() else _listing(root, pattern, skipped)
        for path in files:
            data = path.read_bytes()
            if not data:
                skipped["empty"] += 1
            elif root.is_dir() and b"\0" in data[:BINARY_PROBE]:
                skipped["binary"] += 1
            else:
                documents.append(Document(path.resolve(), _decoded(path, data), hashlib.sha1(data).hexdigest()))
    if not documents:
        counts = ", ".join(f"{count} {kind}" for kind, count in skipped.items() if count)
        raise TextrnnError(
            f"--corpus {' '.join(map(str, entries))} holds no text file"
            + (f" ({counts} skipped)" if counts else "")
            + (f" matching --glob {pattern!r}" if pattern else "")
            + ": give files or directories of UTF-8 text"
        )
    return documents, skipped


def _listing(root: Path, pattern: str | None, skipped: dict) -> list[Path]:
    """The files below ``root`` that ``pattern`` picks, sorted; hidden ones (a name from ``root`` down starting
    with a dot) are counted in ``skipped`` instead."""
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        name = relative if pattern and "/" in pattern else path.name
        if pattern and not fnmatch.fnmatch(name, pattern):
            continue
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            skipped["hidden"] += 1
            continue
        files.append(path)
    return files


def _decoded(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextrnnError(
            f"{path} is not valid UTF-8 (bad byte at offset {error.start}): convert it, e.g. iconv -t UTF-8, "
            "or leave it out with --glob"
        ) from None


def split(length: int, val_fraction: float, test_fraction: float) -> tuple[slice, slice, slice]:
    """Contiguous train / validation / test slices of a stream, in that order."""
    val_start = int(round(length * (1.0 - val_fraction - test_fraction)))
    test_start = int(round(length * (1.0 - test_fraction)))
    return slice(0, val_start), slice(val_start, test_start), slice(test_start, length)
