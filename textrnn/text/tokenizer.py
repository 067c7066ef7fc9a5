"""Character and byte tokenizers backed by HF ``tokenizers``, saved as ``tokenizer.json``.

The normalization (``d2l``: letters lowercased, every other run of characters one
space) lives inside the tokenizer, so any tool that loads ``tokenizer.json`` sees
text exactly as the model did. Id 0 is ``<unk>``; the other ids are the characters
of the training split, sorted.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from textrnn.errors import TextrnnError

UNK = "<unk>"
_CHUNK = 1 << 16  # characters per piece handed to the (parallel) batch encoder


def is_letter(char: str) -> bool:
    return "A" <= char <= "Z" or "a" <= char <= "z"


def cut_point(text: str, d2l: bool) -> int:
    """Where to end a piece of ``text`` so that no word (BPE sees words whole) and, for ``d2l``, no run of
    non-letters (which the normalizer turns into one space) is cut in two: before the last space, or
    before the last run of non-letters. 0: nowhere."""
    if not d2l:
        return max(text.rfind(" "), 0)
    end = len(text)
    while end > 0 and is_letter(text[end - 1]):  # a word that may go on in the next piece
        end -= 1
    while end > 0 and not is_letter(text[end - 1]):  # the run of non-letters before it
        end -= 1
    return end


NORMALIZATIONS = ("d2l", "none")


def make_normalizer(mode: str):
    if mode == "d2l":
        return normalizers.Sequence([normalizers.Replace(Regex("[^A-Za-z]+"), " "), normalizers.Lowercase()])
    if mode == "none":
        return None
    raise TextrnnError(f"unknown normalization {mode!r}: choose d2l or none")


class CharTokenizer:
    """One token per Unicode character; unknown characters become ``<unk>``."""

    kind = "char"

    def __init__(self, tokenizer: Tokenizer):
        self.backend = tokenizer
        vocab = tokenizer.get_vocab()
        if vocab.get(UNK) != 0:
            raise TextrnnError("tokenizer.json is not a textrnn character tokenizer (no <unk> at id 0)")
        self.vocab_size = len(vocab)
        self.unk_id = 0
        self._id_to_char = [""] * self.vocab_size
        for token, index in vocab.items():
            self._id_to_char[index] = token
        self._id_to_char[self.unk_id] = "\ufffd"  # decoded <unk>: the replacement character
        # Encoding is a table look-up over code points (what the HF pre-tokenizer splits into),
        # about 50x faster than the HF pipeline on large text; a test checks that both agree.
        singles = sorted((ord(token), index) for token, index in vocab.items() if len(token) == 1)
        self._codepoints = np.array([code for code, _ in singles], dtype=np.uint32)
        self._codepoint_ids = np.array([index for _, index in singles], dtype=np.int64)

    @classmethod
    def build(cls, normalized_training_text: str, normalize: str) -> CharTokenizer:
        """A vocabulary of the characters in already normalized training text."""
        vocab = {UNK: 0}
        for char in sorted(set(normalized_training_text)):
            vocab[char] = len(vocab)
        return cls(_char_backend(vocab, make_normalizer(normalize)))

    def extended(self, characters) -> CharTokenizer:
        """This tokenizer with ``characters`` added after its own (fine-tuning on a text with new characters): the
        old ids stay, the new ones follow in the order given."""
        vocab = self.backend.get_vocab()
        for char in characters:
            if char not in vocab:
                vocab[char] = len(vocab)
        return CharTokenizer(_char_backend(vocab, self.backend.normalizer))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as error:  # the Rust side raises plain Exception
            if isinstance(error, TextrnnError):
                raise
            raise TextrnnError(f"{path} is not a readable tokenizer.json ({error})") from None

    def to_json(self) -> str:
        return self.backend.to_str(pretty=True)

    def normalize(self, text: str) -> str:
        normalizer = self.backend.normalizer
        return text if normalizer is None else normalizer.normalize_str(text)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (normalized first), as int64, one per character."""
        codes = np.frombuffer(self.normalize(text).encode("utf-32-le"), dtype=np.uint32)
        if not len(self._codepoints):
            return np.full(len(codes), self.unk_id, dtype=np.int64)
        where = np.minimum(np.searchsorted(self._codepoints, codes), len(self._codepoints) - 1)
        return np.where(self._codepoints[where] == codes, self._codepoint_ids[where], self.unk_id)

    @property
    def storage_dtype(self) -> np.dtype:
        """The smallest integer type that holds every id: uint8 up to 256 tokens, then int16, then int32."""
        if self.vocab_size <= 256:
            return np.dtype(np.uint8)
        return np.dtype(np.int16) if self.vocab_size <= 32768 else np.dtype(np.int32)

    def encode_compact(self, text: str, chunk: int = 1 << 20) -> np.ndarray:
        """``encode`` for a whole corpus: ``chunk`` characters at a time into ``storage_dtype``, so the
        temporaries stay a few MB and the result takes one or two bytes per character, not eight."""
        d2l = self.backend.normalizer is not None
        pieces, start = [], 0
        while start < len(text):
            end = min(len(text), start + chunk)
            if end < len(text):  # never inside a word or a run the normalizer merges
                end = start + (cut_point(text[start:end], d2l) or end - start)
            pieces.append(self.encode(text[start:end]).astype(self.storage_dtype))
            start = end
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.storage_dtype)

    def encode_with_backend(self, text: str) -> np.ndarray:
        """The same ids through the HF tokenizers pipeline (slower; the reference for ``encode``)."""
        text = self.normalize(text)
        pieces = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)]
        ids = [np.asarray(encoding.ids, dtype=np.int64) for encoding in self.backend.encode_batch(pieces)]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self._id_to_char[int(i)] for i in ids)

    @staticmethod
    def count_characters(ids: np.ndarray) -> int:
        """Characters in a stretch of ids: one per token."""
        return int(len(ids))

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of ``text`` (after normalization) that the vocabulary lacks."""
        known = set(self._id_to_char[1:])
        return sorted(set(self.normalize(text)) - known)


def _char_backend(vocab: dict, normalizer) -> Tokenizer:
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    if normalizer is not None:
        backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend


def unknown_counts(tokenizer, normalized_text: str, ids: np.ndarray) -> dict[str, int]:
    """The characters of ``normalized_text`` that ``tokenizer`` encoded as ``<unk>`` (``ids`` are its ids), with
    their counts, most frequent first. Only a character tokenizer has unknowns (bytes and BPE cover any text)."""
    if tokenizer.kind != "char":
        return {}
    where = np.flatnonzero(np.asarray(ids) == tokenizer.unk_id)
    counts: dict[str, int] = {}
    for position in where.tolist():
        char = normalized_text[position]
        counts[char] = counts.get(char, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _printable_bytes() -> list[str]:
    """The character that stands for each byte value in HF's byte-level alphabet (GPT-2's convention):
    printable Latin-1 bytes stand for themselves, the other 68 for the characters from U+0100 on."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    mapping, extra = [], 0
    for value in range(256):
        if value in printable:
            mapping.append(chr(value))
        else:
            mapping.append(chr(256 + extra))
            extra += 1
    return mapping


class ByteTokenizer:
    """One token per UTF-8 byte: any text, no unknown characters. Id 0 is ``<unk>`` (never produced),
    byte ``b`` is id ``b + 1``. Saved as an HF byte-level ``tokenizer.json``.

    Decoding holds back an incomplete UTF-8 sequence at the end (a sample cut inside a character
    never ends in a broken one) and shows an invalid sequence inside as U+FFFD.
    """

    kind = "byte"

    def __init__(self, tokenizer: Tokenizer):
        self.backend = tokenizer
        vocab = tokenizer.get_vocab()
        expected = {UNK: 0, **{char: value + 1 for value, char in enumerate(_printable_bytes())}}
        if vocab != expected:
            raise TextrnnError("tokenizer.json is not a textrnn byte tokenizer (its vocabulary differs)")
        self.vocab_size = len(vocab)
        self.unk_id = 0

    @classmethod
    def build(cls, normalize: str) -> ByteTokenizer:
        vocab = {UNK: 0, **{char: value + 1 for value, char in enumerate(_printable_bytes())}}
        backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        normalizer = make_normalizer(normalize)
        if normalizer is not None:
            backend.normalizer = normalizer
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated"),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> ByteTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except TextrnnError:
            raise
        except Exception as error:
            raise TextrnnError(f"{path} is not a readable tokenizer.json ({error})") from None

    to_json = CharTokenizer.to_json
    normalize = CharTokenizer.normalize
    encode_compact = CharTokenizer.encode_compact

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype(np.int16)  # 257 ids

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (normalized first): its UTF-8 bytes plus one, as int64."""
        return np.frombuffer(self.normalize(text).encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1

    def encode_with_backend(self, text: str) -> np.ndarray:
        """The same ids through the HF tokenizers pipeline (the reference for ``encode``)."""
        return np.asarray(self.backend.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        data = bytes(int(i) - 1 for i in ids if int(i) != self.unk_id)
        return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)

    def unknown_characters(self, text: str) -> list[str]:
        return []

    @staticmethod
    def count_characters(ids: np.ndarray) -> int:
        """Characters in a stretch of ids: the bytes that start a UTF-8 sequence (not 10xxxxxx)."""
        values = np.asarray(ids).astype(np.int64) - 1
        return int(((values & 0xC0) != 0x80).sum())


class BpeTokenizer:
    """Byte-level BPE trained with HF ``tokenizers`` on the training split: frequent byte sequences
    (often whole words) become one token. Any text encodes (the 256 bytes are in the vocabulary);
    decoding holds back an incomplete UTF-8 sequence at the end like ``ByteTokenizer``.
    """

    kind = "bpe"

    def __init__(self, tokenizer: Tokenizer):
        self.backend = tokenizer
        if tokenizer.token_to_id(UNK) != 0 or type(tokenizer.model).__name__ != "BPE":
            raise TextrnnError("tokenizer.json is not a textrnn BPE tokenizer (no BPE model with <unk> at id 0)")
        # "<unk>" written in the text is text, not the special token (set on every load: not in tokenizer.json).
        tokenizer.encode_special_tokens = True
        self.vocab_size = tokenizer.get_vocab_size()
        self.unk_id = 0
        byte_of = {char: value for value, char in enumerate(_printable_bytes())}
        self._bytes = [b""] * self.vocab_size
        for token, index in tokenizer.get_vocab().items():
            if index != self.unk_id:
                self._bytes[index] = bytes(byte_of[char] for char in token)
        # Characters per token: the bytes of it that start a UTF-8 sequence.
        self._characters = np.array([sum((b & 0xC0) != 0x80 for b in data) for data in self._bytes], dtype=np.int64)

    @classmethod
    def build(cls, normalized_training_text: str, normalize: str, vocab_size: int) -> BpeTokenizer:
        backend = Tokenizer(models.BPE(unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[UNK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        texts = normalized_training_text
        pieces = _pieces(texts) if isinstance(texts, str) else (piece for text in texts for piece in _pieces(text))
        backend.train_from_iterator(pieces, trainer)
        normalizer = make_normalizer(normalize)
        if normalizer is not None:
            backend.normalizer = normalizer
        return cls(backend)

    load = classmethod(lambda cls, path: _load(cls, path))
    to_json = CharTokenizer.to_json
    normalize = CharTokenizer.normalize
    encode_compact = CharTokenizer.encode_compact
    storage_dtype = CharTokenizer.storage_dtype

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (normalized first), as int64; long text is cut before spaces and
        encoded in parallel (a word never straddles two pieces)."""
        encodings = self.backend.encode_batch(_pieces(self.normalize(text)))
        ids = [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def encode_with_backend(self, text: str) -> np.ndarray:
        """The whole text through HF in one call (the reference for the piecewise ``encode``)."""
        return np.asarray(self.backend.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        data = b"".join(self._bytes[int(i)] for i in ids)
        return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)

    def unknown_characters(self, text: str) -> list[str]:
        return []

    def count_characters(self, ids: np.ndarray) -> int:
        return int(self._characters[np.asarray(ids).astype(np.int64)].sum())


def _pieces(text: str, size: int = _CHUNK) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each cut just before a space."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def _load(cls, path):
    try:
        return cls(Tokenizer.from_file(str(path)))
    except TextrnnError:
        raise
    except Exception as error:  # the Rust side raises plain Exception
        raise TextrnnError(f"{path} is not a readable tokenizer.json ({error})") from None


TOKENIZERS = ("char", "byte", "bpe")


def build_tokenizer(kind: str, normalized_training_text: str, normalize: str, vocab_size: int = 0):
    if kind == "byte":
        return ByteTokenizer.build(normalize)
    if kind == "bpe":
        return BpeTokenizer.build(normalized_training_text, normalize, vocab_size)
    if kind == "char":
        return CharTokenizer.build(normalized_training_text, normalize)
    raise TextrnnError(f"unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZERS)}")


def load_tokenizer(path: str | Path, kind: str = "char"):
    """The tokenizer of a run directory, by the ``type`` its config.json records."""
    classes = {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BpeTokenizer}
    if kind not in classes:
        raise TextrnnError(f"{path}: unknown tokenizer type {kind!r} in config.json")
    return classes[kind].load(path)
