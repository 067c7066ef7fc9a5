"""Large corpora: streamed tokenization into a cache gives exactly the in-memory splits, and trains."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.config import TrainConfig
from textrnn.text import prepare as preparing
from textrnn.text.splits import load_splits

from conftest import TINY_CLI

TEXT = ("The Time-Traveller (for so it will be convenient) 123 said... Ωmega!  " * 300) + "1234 " * 300 + "end"


@pytest.mark.parametrize("normalize", ["d2l", "none"])
@pytest.mark.parametrize("tokenizer", ["char", "byte", "bpe"])
def test_streamed_splits_equal_the_in_memory_ones(tmp_path, monkeypatch, normalize, tokenizer):
    monkeypatch.setattr(preparing, "STREAM_BYTES", 997)  # many pieces, cut anywhere in the raw bytes
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    config = TrainConfig(corpus=str(corpus), normalize=normalize, tokenizer=tokenizer, bpe_vocab_size=300, max_steps=1)
    in_memory_tokenizer, in_memory, _ = load_splits(config, tmp_path)
    streamed_tokenizer, streamed, data = load_splits(config, tmp_path, always_prepare=True)
    assert isinstance(streamed["train"], np.memmap) and data["prepared"]
    assert streamed_tokenizer.to_json() == in_memory_tokenizer.to_json()
    for name in ("train", "val", "test"):
        assert np.array_equal(np.asarray(streamed[name]), in_memory[name]), name
    # Once prepared, the cache is used again (even for a small file), and a changed file gets a new one.
    assert load_splits(config, tmp_path)[2].get("prepared") == data["prepared"]
    corpus.write_text(TEXT + " more", encoding="utf-8")
    assert load_splits(config, tmp_path, always_prepare=True)[2]["prepared"] != data["prepared"]


def test_prepare_command_then_train_on_the_memory_mapped_cache(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["prepare", "--corpus", str(corpus), "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    prepared = json.loads(result.stdout)
    assert sum(prepared["tokens"].values()) == len(TEXT)  # `none` for files: one token per character
    result = runner.invoke(
        cli,
        ["train", "--corpus", str(corpus), "--data-dir", str(tmp_path), *TINY_CLI, "--max-steps", "4", "--json"],
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["checkpoint"]
    stored = json.loads(open(f"{run}/config.json").read())
    assert stored["data"]["prepared"] == prepared["cache"]


def test_a_file_that_is_not_utf8_is_refused_while_streaming(tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"fine text " * 100 + b"\xff\xfe broken")
    result = CliRunner().invoke(cli, ["prepare", "--corpus", str(corpus), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "is not valid UTF-8 (bad byte near offset 1000)" in result.stderr
