import re

import numpy as np
import pytest

from textrnn.errors import TextrnnError
from textrnn.text.tokenizer import CharTokenizer


def test_vocabulary_is_sorted_characters_after_unk():
    tokenizer = CharTokenizer.build("cab a", "none")
    assert tokenizer.vocab_size == 5
    assert tokenizer.encode("abc ").tolist() == [2, 3, 4, 1]


def test_round_trip_keeps_every_character_with_none():
    text = "Héllo,\nwörld! 日本 😀\r\n"
    tokenizer = CharTokenizer.build(text, "none")
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_unknown_characters_map_to_unk_and_are_named():
    tokenizer = CharTokenizer.build("abc", "none")
    ids = tokenizer.encode("abxcy")
    assert ids.tolist() == [1, 2, 0, 3, 0]
    assert (ids == tokenizer.unk_id).sum() == 2
    assert tokenizer.unknown_characters("abxcy") == ["x", "y"]


def test_d2l_normalization_matches_the_book():
    raw = "The Time-Traveller (for so it will be convenient...)\n\nwas 42 years OLD."
    tokenizer = CharTokenizer.build("abcdefghijklmnopqrstuvwxyz ", "d2l")
    expected = re.sub("[^A-Za-z]+", " ", raw).lower()
    assert tokenizer.normalize(raw) == expected
    assert tokenizer.decode(tokenizer.encode(raw)) == expected
    assert tokenizer.unknown_characters("Time Traveller!") == []


def test_saved_json_loads_back_identically(tmp_path):
    tokenizer = CharTokenizer.build("hello world", "d2l")
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_json())
    loaded = CharTokenizer.load(path)
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.encode("Hello, World").tolist() == tokenizer.encode("Hello, World").tolist()


def test_loading_a_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(TextrnnError, match="not a readable tokenizer.json"):
        CharTokenizer.load(path)


def test_long_text_is_encoded_in_pieces_without_loss():
    text = "abcdefghij" * 20_000  # longer than one encoding chunk
    tokenizer = CharTokenizer.build("abcdefghij", "none")
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids[-10:]) == "abcdefghij"


def test_compact_encoding_matches_and_takes_one_byte_per_character():
    tokenizer = CharTokenizer.build("abc d", "none")
    text = "abcd xyz " * 1000
    compact = tokenizer.encode_compact(text, chunk=7)  # chunk boundaries anywhere
    assert compact.dtype == np.uint8 and compact.tolist() == tokenizer.encode(text).tolist()
    wide = CharTokenizer.build("".join(chr(0x4E00 + i) for i in range(300)), "none")
    assert wide.storage_dtype == np.int16
    assert wide.encode_compact(chr(0x4E00 + 299)).tolist() == [wide.encode(chr(0x4E00 + 299))[0]]


@pytest.mark.parametrize("normalize", ["none", "d2l"])
def test_byte_tokenizer_matches_hf_round_trips_and_counts_characters(tmp_path, normalize):
    from textrnn.text.tokenizer import ByteTokenizer, load_tokenizer

    tokenizer = ByteTokenizer.build(normalize)
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_json())
    tokenizer = load_tokenizer(path, "byte")
    for text in ["héllo 世界 🙂!", "plain", "\x00\r\n\t", ""]:
        ids = tokenizer.encode(text)
        assert ids.tolist() == tokenizer.encode_with_backend(text).tolist()
        assert tokenizer.decode(ids) == tokenizer.normalize(text)
        assert tokenizer.count_characters(ids) == len(tokenizer.normalize(text))
    assert tokenizer.unknown_characters("anything ✓") == []
    emoji = [byte + 1 for byte in "a🙂".encode()]
    assert tokenizer.decode(emoji[:-2]) == "a"  # an incomplete character at the end is held back
    assert tokenizer.decode([ord("a") + 1, 0x80 + 1, ord("b") + 1]) == "a\ufffdb"  # a stray continuation byte
    with pytest.raises(TextrnnError, match="not a textrnn byte tokenizer"):
        path.write_text(CharTokenizer.build("abc", "none").to_json())
        load_tokenizer(path, "byte")


def test_bpe_learns_words_round_trips_any_text_and_counts_characters(tmp_path):
    from textrnn.text.tokenizer import BpeTokenizer, _pieces, load_tokenizer

    training = "the time traveller said that the time machine was ready " * 40
    tokenizer = BpeTokenizer.build(training, "none", 300)
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_json())
    tokenizer = load_tokenizer(path, "bpe")
    assert len(tokenizer.encode("the time traveller")) < len("the time traveller") / 2  # words became tokens
    for text in ["the time traveller", "unseen Ωmega 東京 🙂", "\x00\n", ""]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text and tokenizer.count_characters(ids) == len(text)
    long = "word " * 50_000  # encoded in pieces, each cut before a space
    assert "".join(_pieces(long, 1000)) == long and all(p.startswith(" ") for p in _pieces(long, 1000)[1:])
    assert tokenizer.encode(long).tolist() == tokenizer.encode_with_backend(long).tolist()
    assert tokenizer.unknown_characters("✓") == [] and tokenizer.storage_dtype == np.int16
    with pytest.raises(TextrnnError, match="not a textrnn BPE tokenizer"):
        path.write_text(CharTokenizer.build("abc", "none").to_json())
        load_tokenizer(path, "bpe")


def test_long_text_is_encoded_in_pieces_that_cut_no_word_or_merged_run():
    from textrnn.text.tokenizer import BpeTokenizer

    d2l = CharTokenizer.build("abcdef ", "d2l")
    assert d2l.decode(d2l.encode_compact("Abc!! def", chunk=4)) == "abc def"  # one space, as in one piece
    bpe = BpeTokenizer.build("the <unk> said the time traveller " * 50, "none", 300)
    text = "the time traveller said " * 300
    assert bpe.encode_compact(text, chunk=500).tolist() == bpe.encode(text).tolist()
    literal = bpe.encode("a <unk> b")  # the five characters are text, not the unknown token
    assert bpe.decode(literal) == "a <unk> b" and bpe.count_characters(literal) == 9
