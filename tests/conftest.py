"""Shared fixtures: a tiny corpus, a tiny model config, and an isolated working directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "timemachine.txt"

# 200 characters of d2l-normalized text: small enough to memorise in seconds.
TINY_TEXT = (
    "the time traveller for so it will be convenient to speak of him was expounding a recondite matter to us "
    "his grey eyes shone and twinkled and his usually pale face was flushed and animated the fire bur"
)
assert len(TINY_TEXT) == 200


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test runs in its own directory (so checkpoints/ is fresh) with a fixed seed and one thread."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield tmp_path


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def timemachine_dir(tmp_path_factory, monkeypatch) -> Path:
    """A data directory holding the Time Machine (from ../shared or $TEXTRNN_DATA_DIR), set as TEXTRNN_DATA_DIR."""
    import os

    source = SHARED_CORPUS
    if os.environ.get("TEXTRNN_DATA_DIR"):
        candidate = Path(os.environ["TEXTRNN_DATA_DIR"]) / "timemachine.txt"
        if candidate.is_file():
            source = candidate
    if not source.is_file():
        pytest.skip("the Time Machine corpus is not available (set TEXTRNN_DATA_DIR)")
    directory = tmp_path_factory.mktemp("data")
    shutil.copy(source, directory / "timemachine.txt")
    monkeypatch.setenv("TEXTRNN_DATA_DIR", str(directory))
    return directory


# The default recipe's regularizers off: tests that want one turn it on.
REGULARIZERS_OFF = {"weight_drop": 0.0, "dropout_embedding": 0.0, "dropout_layers": 0.0, "dropout_output": 0.0}
TINY_MODEL = {"hidden_size": 8, "num_layers": 1, "dropout": 0.0, "embedding_size": 8, **REGULARIZERS_OFF}
# CPU even where a GPU exists: the exact-resume guarantee and the expected figures are for the CPU.
TINY_TRAIN = {
    "device": "cpu",
    "batch_size": 2,
    "num_steps": 8,
    "max_seconds": 0,
    "max_steps": 6,
    "eval_every": 3,
    "warmup_steps": 0,
    "average": "none",
}

# The keys of `textrnn train --json` (DESIGN.md's contract).
TRAIN_JSON_KEYS = (
    "tokens_per_sec",
    "train_perplexity",
    "val_perplexity",
    "best_val_perplexity",
    "val_bits_per_char",
    "steps",
    "tokens",
    "elapsed_sec",
    "checkpoint",
)

# A model small enough for CLI tests to train in a blink (on the CPU, even where a GPU exists).
TINY_CLI = [
    "--device",
    "cpu",
    "--hidden-size",
    "8",
    "--num-layers",
    "1",
    "--embedding-size",
    "8",
    "--batch-size",
    "2",
    "--num-steps",
    "8",
    *("--weight-drop", "0", "--dropout-embedding", "0", "--dropout-layers", "0", "--dropout-output", "0"),
    *("--average", "none"),
]
