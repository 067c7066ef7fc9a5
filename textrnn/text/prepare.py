"""Large corpora: tokenize a file in a stream into cached token arrays, memory-mapped for training.

``prepare`` reads the file 16 MB at a time (three passes: count the characters, learn the
vocabulary on the training part, encode), so memory stays bounded by the pieces, not the
corpus. The result is a directory in the data directory's ``prepared/`` holding
``tokenizer.json``, ``train.bin``, ``val.bin``, ``test.bin`` (raw ``uint8`` / ``int16`` /
``int32`` ids) and ``meta.json``, written last, so a directory without it is incomplete and
is rebuilt. Its name carries the file's SHA-1 and the tokenizer settings: a changed file
or other settings get their own cache.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from textrnn.atomic import atomic_write
from textrnn.errors import TextrnnError
from textrnn.text.corpus import split
from textrnn.text.tokenizer import build_tokenizer, cut_point, is_letter, load_tokenizer, make_normalizer

STREAM_BYTES = 16 << 20  # read at a time
LARGE_FILE = 64 << 20  # `train` prepares files at least this large on first use
SPLITS = ("train", "val", "test")


def normalized_pieces(path: Path, normalize: str) -> Iterator[str]:
    """The file's text, normalized, piece by piece, each ending where ``cut_point`` says: no word is cut in two
    (so BPE sees the words whole), nor a run that the ``d2l`` normalizer turns into one space."""
    normalizer = make_normalizer(normalize)
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry, offset = "", 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(STREAM_BYTES)
            final = not block
            try:
                text = carry + decoder.decode(block, final=final)
            except UnicodeDecodeError as error:
                raise TextrnnError(
                    f"{path} is not valid UTF-8 (bad byte near offset {offset + error.start}): convert it, "
                    "e.g. iconv -t UTF-8"
                ) from None
            offset += len(block)
            carry = ""
            if not final:
                cut = cut_point(text, normalizer is not None)
                if cut == 0 and normalizer is not None and not any(map(is_letter, text)):
                    text, carry = "", normalizer.normalize_str(text)  # no letter at all: one space at most
                elif cut > 0:
                    text, carry = text[:cut], text[cut:]
            if normalizer is not None and text:
                text = normalizer.normalize_str(text)
            if text:
                yield text
            if final:
                return


def _split_pieces(path: Path, normalize: str, bounds: list[int]) -> Iterator[tuple[int, str]]:
    """``(split index, text)`` pieces: the normalized text cut at the character positions ``bounds``."""
    position, split = 0, 0
    for piece in normalized_pieces(path, normalize):
        while piece:
            room = bounds[split] - position
            part, piece = piece[:room], piece[room:]
            position += len(part)
            if part:
                yield split, part
            if position == bounds[split] and split < len(bounds) - 1:
                split += 1
            elif not part:
                break


def cache_dir(path: Path, sha1: str, settings: dict, root: Path) -> Path:
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return root / "prepared" / f"{path.stem}-{sha1[:12]}-{key}"


def prepare(path: Path, sha1: str, settings: dict, root: Path, report=None) -> Path:
    """Tokenize ``path`` into its cache (if not there yet) and return the cache directory.

    ``settings``: normalize, tokenizer, bpe_vocab_size, val_fraction, test_fraction.
    ``report(stage, info)`` hears about each pass.
    """
    report = report or (lambda stage, info: None)
    target = cache_dir(path, sha1, settings, root)
    if is_complete(target):
        return target
    started = time.perf_counter()
    total = 0
    for piece in normalized_pieces(path, settings["normalize"]):
        total += len(piece)
    report("counted", {"characters": total})
    parts = split(total, settings["val_fraction"], settings["test_fraction"])
    bounds = [part.stop for part in parts]
    if total == 0:
        raise TextrnnError(f"{path} has no text left after normalization")

    def training_pieces():
        for index, text in _split_pieces(path, settings["normalize"], bounds):
            if index > 0:
                return
            yield text

    if settings["tokenizer"] == "char":
        alphabet = set()
        for text in training_pieces():
            alphabet.update(text)
        tokenizer = build_tokenizer("char", "".join(sorted(alphabet)), settings["normalize"])
    elif settings["tokenizer"] == "bpe":
        tokenizer = build_tokenizer("bpe", training_pieces(), settings["normalize"], settings["bpe_vocab_size"])
    else:
        tokenizer = build_tokenizer(settings["tokenizer"], "", settings["normalize"])
    report("vocabulary", {"vocab_size": tokenizer.vocab_size})

    work = target.with_name(f"{target.name}.partial-{os.getpid()}")  # each writer its own: runs may race
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    counts = dict.fromkeys(SPLITS, 0)
    characters = dict.fromkeys(SPLITS, 0)
    outputs = {name: open(work / f"{name}.bin", "wb") for name in SPLITS}  # noqa: SIM115
    try:
        for index, text in _split_pieces(path, settings["normalize"], bounds):
            name = SPLITS[index]
            ids = tokenizer.encode_compact(text)  # the text is normalized already; normalizing again is a no-op
            ids.tofile(outputs[name])
            counts[name] += len(ids)
            characters[name] += len(text)
        for handle in outputs.values():  # the arrays are on disk before meta.json says they are complete
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for handle in outputs.values():
            handle.close()
    atomic_write(work / "tokenizer.json", tokenizer.to_json().encode())
    meta = {
        "source": str(path.resolve()),
        "sha1": sha1,
        "settings": settings,
        "tokenizer": tokenizer.kind,
        "dtype": tokenizer.storage_dtype.name,
        "tokens": counts,
        "characters": characters,
        "seconds": time.perf_counter() - started,
    }
    atomic_write(work / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    if is_complete(target):  # another process finished first: keep its cache
        shutil.rmtree(work, ignore_errors=True)
        return target
    shutil.rmtree(target, ignore_errors=True)
    try:
        work.rename(target)
    except OSError:  # another process renamed its copy in between
        shutil.rmtree(work, ignore_errors=True)
        if not is_complete(target):
            raise
    report("encoded", meta)
    return target


def is_complete(target: Path) -> bool:
    """A cache with meta.json and arrays of the sizes it states (a crash mid-write leaves none of that)."""
    try:
        meta = json.loads((target / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        return all((target / f"{name}.bin").stat().st_size == meta["tokens"][name] * itemsize for name in SPLITS)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_prepared(target: Path):
    """``(tokenizer, splits, meta)`` of a cache: the splits memory-mapped (copy-on-write, never written)."""
    meta = json.loads((target / "meta.json").read_text())
    tokenizer = load_tokenizer(target / "tokenizer.json", meta["tokenizer"])
    splits = {}
    for name in SPLITS:
        count = meta["tokens"][name]
        splits[name] = (
            np.memmap(target / f"{name}.bin", dtype=meta["dtype"], mode="c", shape=(count,))
            if count
            else np.zeros(0, dtype=meta["dtype"])
        )
    return tokenizer, splits, meta
