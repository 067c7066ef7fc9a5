"""Corpora: the built-in registry, the cache directory, downloads, local files, splits.

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
from textrnn.tokenizer import CharTokenizer, build_tokenizer, make_normalizer


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


def _prepared(config, path: Path, normalize: str, directory: Path | None, tokenizer, always: bool = False):
    """The splits from the streamed cache of ``textrnn prepare``: used when it exists for these settings,
    and made first for a file of ``LARGE_FILE`` bytes or more. None for smaller files without a cache."""
    from textrnn.prepare import LARGE_FILE, _complete, cache_dir, load_prepared, prepare

    if not path.is_file():
        return None
    settings = {
        "normalize": normalize,
        "tokenizer": config.tokenizer,
        "bpe_vocab_size": config.bpe_vocab_size if config.tokenizer == "bpe" else None,
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
    }
    root = directory or data_dir()
    size = path.stat().st_size
    if always:
        size = max(size, LARGE_FILE)
    if size < LARGE_FILE and not any((root / "prepared").glob(f"{path.stem}-*")):
        return None  # small and never prepared: read it whole (no hashing needed to know)
    sha1 = sha1_of(path)
    if size < LARGE_FILE and not _complete(cache_dir(path, sha1, settings, root)):
        return None
    cached_tokenizer, splits, meta = load_prepared(prepare(path, sha1, settings, root))
    if tokenizer is not None and tokenizer.to_json() != cached_tokenizer.to_json():
        raise TextrnnError(
            f"the prepared cache of {path} has another tokenizer than this run: delete it or --resume elsewhere"
        )
    for name in ("val", "test"):
        if meta["tokens"][name] < 2:
            raise TextrnnError(f"{path} is too short: its {name} split has {meta['tokens'][name]} tokens")
    data = {
        "corpus": config.corpus,
        "path": str(Path(path).resolve()),
        "sha1": sha1,
        "normalize": normalize,
        "tokens": meta["tokens"],
        "characters": meta["characters"],
        "prepared": str(cache_dir(path, sha1, settings, root)),
    }
    return cached_tokenizer, splits, data


def load_splits(config, data_dir: Path | None = None, tokenizer: CharTokenizer | None = None, always_prepare=False):
    """Read, normalize and split the corpus of a ``TrainConfig``; build the tokenizer on the training split (unless given).

    A file of ``prepare.LARGE_FILE`` bytes or more (or any, with ``always_prepare``) is tokenized in a
    stream into a cache and its splits are memory-mapped (see ``textrnn.prepare``).
    Returns ``(tokenizer, splits, data)``: ``splits`` maps train/val/test to compact integer arrays
    (``tokenizer.storage_dtype``: one byte per character for up to 256 tokens) and
    ``data`` describes the corpus for the run config.
    """
    path, default_normalize = resolve(config.corpus, data_dir)
    normalize = config.normalize or default_normalize or "none"
    prepared = _prepared(config, path, normalize, data_dir, tokenizer, always_prepare)
    if prepared is not None:
        return prepared
    text = read_text(path)
    normalizer = make_normalizer(normalize)
    if normalizer is not None:
        text = normalizer.normalize_str(text)
    parts = split(len(text), config.val_fraction, config.test_fraction)
    if tokenizer is None:
        tokenizer = build_tokenizer(config.tokenizer, text[parts[0]], normalize, config.bpe_vocab_size)
    # The text is split by characters, then each part is encoded: a byte tokenizer gives several ids
    # to a character, and no character is cut between two splits.
    splits = {name: tokenizer.encode_compact(text[part]) for name, part in zip(("train", "val", "test"), parts)}
    for name in ("val", "test"):
        if len(splits[name]) < 2:
            raise TextrnnError(
                f"{path} is too short: its {name} split has {len(splits[name])} characters; "
                f"use a longer corpus or a larger --{name}-fraction"
            )
    data = {
        "corpus": config.corpus,
        "path": str(Path(path).resolve()),
        "sha1": sha1_of(path),
        "normalize": normalize,
        "tokens": {name: int(len(split)) for name, split in splits.items()},
        "characters": {name: part.stop - part.start for name, part in zip(("train", "val", "test"), parts)},
    }
    return tokenizer, splits, data
