import hashlib
import io

import pytest

from textrnn.errors import TextrnnError
from textrnn.text import corpus


def test_read_text_refuses_missing_empty_directory_and_non_utf8(tmp_path):
    with pytest.raises(TextrnnError, match="does not exist"):
        corpus.read_text(tmp_path / "nope.txt")
    with pytest.raises(TextrnnError, match="is a directory"):
        corpus.read_text(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(TextrnnError, match="is empty"):
        corpus.read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ok".encode("latin-1"))
    with pytest.raises(TextrnnError, match="not valid UTF-8 .*offset 3"):
        corpus.read_text(tmp_path / "latin1.txt")


def test_splits_are_contiguous_disjoint_and_cover_the_stream():
    train, val, test = corpus.split(1000, 0.05, 0.05)
    assert (train.start, train.stop, val.start, val.stop, test.start, test.stop) == (0, 900, 900, 950, 950, 1000)


def test_builtin_corpus_comes_from_the_data_dir_and_is_verified(timemachine_dir):
    path, normalize = corpus.resolve("timemachine")
    assert path == timemachine_dir / "timemachine.txt"
    assert normalize == "d2l"


def test_a_cached_file_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTRNN_DATA_DIR", str(tmp_path))
    (tmp_path / "timemachine.txt").write_text("not the book")
    with pytest.raises(TextrnnError, match="delete it to download it again"):
        corpus.resolve("timemachine")


def test_offline_without_a_cached_copy_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTRNN_DATA_DIR", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(corpus.urllib.request, "urlopen", offline)
    with pytest.raises(TextrnnError, match=r"put timemachine.txt \(sha1 090b5e7e.*\) in .*cache"):
        corpus.resolve("timemachine")
    assert not (tmp_path / "cache" / "timemachine.txt").exists()


def test_a_download_is_verified_and_written_into_the_cache(tmp_path, monkeypatch):
    payload = b"the time machine, pretend edition"
    monkeypatch.setitem(
        corpus.BUILTIN,
        "pretend",
        corpus.BuiltinCorpus(
            "pretend.txt", "http://example.invalid/pretend.txt", hashlib.sha1(payload).hexdigest(), "d2l", ""
        ),
    )
    monkeypatch.setenv("TEXTRNN_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    path, _ = corpus.resolve("pretend")
    assert path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == ["pretend.txt"]  # no temporary files left behind


def test_a_corrupted_download_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTRNN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(corpus.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"truncated"))
    with pytest.raises(TextrnnError, match="failed its sha1 check"):
        corpus.resolve("timemachine")
    assert not (tmp_path / "timemachine.txt").exists()
