import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from textrnn import checkpoint, load_checkpoint
from textrnn.config import ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.task import train

from conftest import TINY_MODEL, TINY_TRAIN


@pytest.fixture
def run(tiny_corpus, tmp_path):
    directory = tmp_path / "run"
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN), directory)
    return directory


def test_round_trip_gives_the_same_model(run):
    model = load_checkpoint(run, weights="last")
    saved = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert model.tokenizer.vocab_size == model.config.vocab_size
    again = load_checkpoint(run, weights="last")
    tokens = torch.randint(0, model.config.vocab_size, (2, 5))
    assert torch.equal(model(tokens)[0], again(tokens)[0])


def test_newest_run_is_the_default(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, age in (("older", 100), ("newer", 10), ("newest-but-unfinished", 0)):
        shutil.copytree(run, tmp_path / "checkpoints" / name)
        for weights in ("best.pt", "last.pt"):
            path = tmp_path / "checkpoints" / name / weights
            os.utime(path, (time.time() - age, time.time() - age))
    for weights in ("best.pt", "last.pt"):  # a run that has not written weights yet is skipped
        (tmp_path / "checkpoints" / "newest-but-unfinished" / weights).unlink()
    assert checkpoint.newest_run() == Path("checkpoints") / "newer"


def test_no_runs_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TextrnnError, match="no trained runs"):
        checkpoint.newest_run()


def test_truncated_weights_are_refused(run):
    data = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TextrnnError, match="not a readable textrnn checkpoint"):
        load_checkpoint(run)


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_malicious_pickle_is_refused_and_never_runs(run, tmp_path):
    target = tmp_path / "pwned"
    with open(run / "best.pt", "wb") as out:
        torch.save({"model": Exploit(str(target))}, out, pickle_protocol=2, _use_new_zipfile_serialization=True)
    with pytest.raises(TextrnnError, match="not a readable textrnn checkpoint"):
        load_checkpoint(run)
    (run / "best.pt").write_bytes(pickle.dumps({"model": Exploit(str(target))}, protocol=2))
    with pytest.raises(TextrnnError):
        load_checkpoint(run)
    assert not target.exists()


def test_unknown_format_version_is_refused(run):
    config = json.loads((run / "config.json").read_text())
    config["format_version"] = 99
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextrnnError, match="format version 99"):
        load_checkpoint(run)


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(TextrnnError, match="not a textrnn run directory"):
        load_checkpoint(tmp_path / "elsewhere")


def test_a_tokenizer_that_does_not_match_the_weights_is_refused(run):
    from textrnn.text.tokenizer import CharTokenizer

    (run / "tokenizer.json").write_text(CharTokenizer.build("ab", "none").to_json())
    with pytest.raises(TextrnnError, match="does not belong to these weights"):
        load_checkpoint(run)


def test_writes_leave_no_temporary_files_and_usual_permissions(run):
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert (run / "last.pt").stat().st_mode & 0o044  # readable by others, as with a plain open()
