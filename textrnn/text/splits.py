"""The one data path for text: a corpus becomes tokenized train / validation / test splits.

``load_splits`` decides, in one place, between reading the file into memory (small files)
and the streamed, memory-mapped token cache of ``textrnn prepare`` (files of
``prepare.LARGE_FILE`` bytes or more, or any file that already has a cache for these settings).
A corpus of several documents (several paths, a directory) is read into memory, each document
split on its own (see ``_load_documents``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textrnn.errors import TextrnnError
from textrnn.text.corpus import BUILTIN, collect, is_collection, read_text, resolve, sha1_of, split
from textrnn.text.corpus import data_dir as default_data_dir
from textrnn.text.prepare import LARGE_FILE, cache_dir, is_complete, load_prepared, prepare
from textrnn.text.tokenizer import (
    NORMALIZATIONS,
    TOKENIZERS,
    CharTokenizer,
    build_tokenizer,
    make_normalizer,
    unknown_counts,
)


@dataclass(frozen=True)
class TextSource:
    """What the text stage needs to make a run's splits: the corpus (a built-in name, a UTF-8 file, a directory, or
    a tuple of those: several documents), its normalization (None: the corpus's own, ``d2l`` for a built-in one,
    ``none`` for files and several documents), the tokenizer, the fractions of the stream for validation and test
    (taken from the end of every document) and ``glob``, the files of a directory to read (None: all).
    ``TrainConfig.text_source()`` gives the one of a training run."""

    corpus: str | tuple[str, ...] = "timemachine"
    normalize: str | None = None
    tokenizer: str = "char"
    bpe_vocab_size: int = 1000
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    glob: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus", corpus_value(self.corpus))
        checks = [
            (
                self.normalize is None or self.normalize in NORMALIZATIONS,
                f"unknown normalization {self.normalize!r}: choose one of {', '.join(NORMALIZATIONS)}",
            ),
            (
                257 <= self.bpe_vocab_size <= 1_000_000,
                "--vocab-size must be in [257, 1000000] (the 256 bytes and <unk> come first), "
                f"got {self.bpe_vocab_size}",
            ),
            (
                self.tokenizer in TOKENIZERS,
                f"unknown tokenizer {self.tokenizer!r}: choose one of {', '.join(TOKENIZERS)}",
            ),
            *(
                (0.0 < value < 0.5, f"--{name.replace('_', '-')} must be in (0, 0.5), got {value}")
                for name, value in (("val_fraction", self.val_fraction), ("test_fraction", self.test_fraction))
            ),
        ]
        for passed, message in checks:
            if not passed:
                raise TextrnnError(message)


def corpus_value(corpus) -> str | tuple[str, ...]:
    """``--corpus`` as a config holds it: one path or name as a string (as before several were possible), several
    as a tuple of strings."""
    if isinstance(corpus, str):
        return corpus
    entries = tuple(str(entry) for entry in corpus)
    if not entries:
        raise TextrnnError("--corpus names no text: give a built-in corpus, a file or a directory")
    return entries[0] if len(entries) == 1 else entries


def document_starts(data: dict, split: str) -> list[int] | None:
    """Where each document begins in the token stream of ``split`` (a run of several documents; None: one)."""
    documents = data.get("documents")
    if not documents or len(documents) < 2:
        return None
    starts, position = [], 0
    for document in documents:
        starts.append(position)
        position += document["tokens"][split]
    return starts


def pieces(tokens, starts: list[int] | None) -> list:
    """``tokens`` cut at the document ``starts`` (None: one piece)."""
    if not starts:
        return [tokens]
    ends = [*starts[1:], len(tokens)]
    return [tokens[start:end] for start, end in zip(starts, ends) if end > start]


def _prepared(source, path: Path, normalize: str, directory: Path | None, tokenizer, always: bool = False):
    """The splits from the streamed cache of ``textrnn prepare``: used when it exists for these settings,
    and made first for a file of ``LARGE_FILE`` bytes or more. None for smaller files without a cache."""
    if not path.is_file():
        return None
    settings = {
        "normalize": normalize,
        "tokenizer": source.tokenizer,
        "bpe_vocab_size": source.bpe_vocab_size if source.tokenizer == "bpe" else None,
        "val_fraction": source.val_fraction,
        "test_fraction": source.test_fraction,
    }
    root = directory or default_data_dir()
    size = path.stat().st_size
    if always:
        size = max(size, LARGE_FILE)
    if size < LARGE_FILE and not any((root / "prepared").glob(f"{path.stem}-*")):
        return None  # small and never prepared: read it whole (no hashing needed to know)
    sha1 = sha1_of(path)
    complete = is_complete(cache_dir(path, sha1, settings, root))
    # A given tokenizer (a resumed or fine-tuned run, eval --corpus) is not the one a new cache would learn: read the
    # file whole with it rather than build a cache it cannot use.
    if not complete and (size < LARGE_FILE or (tokenizer is not None and not always)):
        return None
    cached_tokenizer, splits, meta = load_prepared(prepare(path, sha1, settings, root))
    if tokenizer is not None and tokenizer.to_json() != cached_tokenizer.to_json():
        if not always:
            return None  # the cache of another run's vocabulary: read the file whole with this one
        raise TextrnnError(
            f"the prepared cache of {path} has another tokenizer than this run: delete it or --resume elsewhere"
        )
    for name in ("val", "test"):
        if meta["tokens"][name] < 2:
            raise TextrnnError(f"{path} is too short: its {name} split has {meta['tokens'][name]} tokens")
    data = {
        "corpus": source.corpus,
        "path": str(Path(path).resolve()),
        "sha1": sha1,
        "normalize": normalize,
        "tokens": meta["tokens"],
        "characters": meta["characters"],
        "prepared": str(cache_dir(path, sha1, settings, root)),
    }
    return cached_tokenizer, splits, data


def load_splits(
    source: TextSource, data_dir: Path | None = None, tokenizer: CharTokenizer | None = None, always_prepare=False
):
    """Read, normalize and split the corpus of ``source`` (a ``TextSource``, or a config with its fields such as a
    ``TrainConfig``); build the tokenizer on the training split (unless given).

    A file of ``prepare.LARGE_FILE`` bytes or more (or any, with ``always_prepare``) is tokenized in a
    stream into a cache and its splits are memory-mapped (see ``textrnn.text.prepare``).
    Returns ``(tokenizer, splits, data)``: ``splits`` maps train/val/test to compact integer arrays
    (``tokenizer.storage_dtype``: one byte per character for up to 256 tokens) and
    ``data`` describes the corpus for the run config.
    """
    if is_collection(source.corpus):
        return _load_documents(source, data_dir, tokenizer)
    path, default_normalize = resolve(source.corpus, data_dir)
    normalize = source.normalize or default_normalize or "none"
    prepared = _prepared(source, path, normalize, data_dir, tokenizer, always_prepare)
    if prepared is not None:
        return prepared
    given_tokenizer = tokenizer is not None
    text = read_text(path)
    normalizer = make_normalizer(normalize)
    if normalizer is not None:
        text = normalizer.normalize_str(text)
    parts = split(len(text), source.val_fraction, source.test_fraction)
    if tokenizer is None:
        tokenizer = build_tokenizer(source.tokenizer, text[parts[0]], normalize, source.bpe_vocab_size)
    # The text is split by characters, then each part is encoded: a byte tokenizer gives several ids
    # to a character, and no character is cut between two splits.
    splits = {name: tokenizer.encode_compact(text[part]) for name, part in zip(("train", "val", "test"), parts)}
    _check_lengths(path, splits)
    data = {
        "corpus": source.corpus,
        "path": str(Path(path).resolve()),
        "sha1": sha1_of(path),
        "normalize": normalize,
        "tokens": {name: int(len(split)) for name, split in splits.items()},
        "characters": {name: part.stop - part.start for name, part in zip(("train", "val", "test"), parts)},
    }
    if given_tokenizer:
        pairs = [(name, text[part], splits[name]) for name, part in zip(SPLIT_NAMES, parts)]
        data["unknown_characters"] = _unknown_by_split(tokenizer, pairs)
    return tokenizer, splits, data


def _unknown_by_split(tokenizer, pairs) -> dict:
    """``{split: {character: count}}`` of the characters that ``tokenizer`` lacks, from ``(split, normalized
    text, its ids)`` pieces."""
    found: dict[str, dict[str, int]] = {name: {} for name in SPLIT_NAMES}
    for name, text, ids in pairs:
        for char, count in unknown_counts(tokenizer, text, ids).items():
            found[name][char] = found[name].get(char, 0) + count
    return found


def unknown_characters(data: dict, names=("train", "val", "test")) -> dict[str, int]:
    """The characters of the splits ``names`` that the tokenizer given to ``load_splits`` lacks, with their
    counts, most frequent first (empty when none, or when no tokenizer was given)."""
    merged: dict[str, int] = {}
    for name in names:
        for char, count in data.get("unknown_characters", {}).get(name, {}).items():
            merged[char] = merged.get(char, 0) + count
    return dict(sorted(merged.items(), key=lambda item: (-item[1], item[0])))


def _check_lengths(name, splits: dict) -> None:
    for split_name in ("val", "test"):
        if len(splits[split_name]) < 2:
            raise TextrnnError(
                f"{name} is too short: its {split_name} split has {len(splits[split_name])} characters; "
                f"use a longer corpus or a larger --{split_name}-fraction"
            )


SPLIT_NAMES = ("train", "val", "test")


def _load_documents(source: TextSource, data_dir: Path | None, tokenizer):
    """``load_splits`` for several documents: each is normalized and split on its own (validation and test come
    from the end of every document), the parts are laid end to end, and ``data["documents"]`` says where each
    document's tokens are, so that training and evaluation start every document from a fresh state."""
    documents, skipped = collect(source.corpus, source.glob, data_dir)
    normalize = source.normalize or "none"
    normalizer = make_normalizer(normalize)
    texts = [normalizer.normalize_str(doc.text) if normalizer is not None else doc.text for doc in documents]
    parts = [split(len(text), source.val_fraction, source.test_fraction) for text in texts]
    given_tokenizer = tokenizer is not None
    if tokenizer is None:
        training_text = "".join(text[part[0]] for text, part in zip(texts, parts))
        tokenizer = build_tokenizer(source.tokenizer, training_text, normalize, source.bpe_vocab_size)
    encoded = [[tokenizer.encode_compact(text[piece]) for piece in part] for text, part in zip(texts, parts)]
    splits = {name: np.concatenate([pieces[index] for pieces in encoded]) for index, name in enumerate(SPLIT_NAMES)}
    entries = [source.corpus] if isinstance(source.corpus, str) else list(source.corpus)
    _check_lengths(f"--corpus {' '.join(entries)}", splits)
    digest = hashlib.sha1("".join(doc.sha1 for doc in documents).encode())
    data = {
        "corpus": source.corpus if isinstance(source.corpus, str) else list(source.corpus),
        "paths": [entry if entry in BUILTIN else str(Path(entry).resolve()) for entry in entries],
        "path": str(Path(entries[0]).resolve()) if len(entries) == 1 else None,
        "sha1": digest.hexdigest(),
        "normalize": normalize,
        "tokens": {name: int(len(array)) for name, array in splits.items()},
        "characters": {
            name: sum(part[index].stop - part[index].start for part in parts) for index, name in enumerate(SPLIT_NAMES)
        },
        "skipped": skipped,
        "documents": [
            {"path": str(doc.path), "sha1": doc.sha1, "tokens": {n: int(len(a)) for n, a in zip(SPLIT_NAMES, pieces)}}
            for doc, pieces in zip(documents, encoded)
        ],
    }
    if given_tokenizer:
        pairs = [
            (name, text[part[index]], pieces[index])
            for text, part, pieces in zip(texts, parts, encoded)
            for index, name in enumerate(SPLIT_NAMES)
        ]
        data["unknown_characters"] = _unknown_by_split(tokenizer, pairs)
    return tokenizer, splits, data
