"""The one data path for text: a corpus becomes tokenized train / validation / test splits.

``load_splits`` decides, in one place, between reading the file into memory (small files)
and the streamed, memory-mapped token cache of ``textrnn prepare`` (files of
``prepare.LARGE_FILE`` bytes or more, or any file that already has a cache for these settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textrnn.errors import TextrnnError
from textrnn.text.corpus import data_dir as default_data_dir
from textrnn.text.corpus import read_text, resolve, sha1_of, split
from textrnn.text.prepare import LARGE_FILE, cache_dir, is_complete, load_prepared, prepare
from textrnn.text.tokenizer import NORMALIZATIONS, TOKENIZERS, CharTokenizer, build_tokenizer, make_normalizer


@dataclass(frozen=True)
class TextSource:
    """What the text stage needs to make a run's splits: the corpus (a built-in name or a UTF-8 file), its
    normalization (None: the corpus's own, ``d2l`` for the built-in ones, ``none`` for files), the tokenizer and
    the fractions of the stream for validation and test (taken from the end). ``TrainConfig.text_source()``
    gives the one of a training run."""

    corpus: str = "timemachine"
    normalize: str | None = None
    tokenizer: str = "char"
    bpe_vocab_size: int = 1000
    val_fraction: float = 0.05
    test_fraction: float = 0.05

    def __post_init__(self) -> None:
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
    if size < LARGE_FILE and not is_complete(cache_dir(path, sha1, settings, root)):
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
    path, default_normalize = resolve(source.corpus, data_dir)
    normalize = source.normalize or default_normalize or "none"
    prepared = _prepared(source, path, normalize, data_dir, tokenizer, always_prepare)
    if prepared is not None:
        return prepared
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
    for name in ("val", "test"):
        if len(splits[name]) < 2:
            raise TextrnnError(
                f"{path} is too short: its {name} split has {len(splits[name])} characters; "
                f"use a longer corpus or a larger --{name}-fraction"
            )
    data = {
        "corpus": source.corpus,
        "path": str(Path(path).resolve()),
        "sha1": sha1_of(path),
        "normalize": normalize,
        "tokens": {name: int(len(split)) for name, split in splits.items()},
        "characters": {name: part.stop - part.start for name, part in zip(("train", "val", "test"), parts)},
    }
    return tokenizer, splits, data
