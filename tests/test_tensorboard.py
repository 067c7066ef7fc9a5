"""--tensorboard: the trainer's log and eval numbers become TensorBoard scalars at their steps."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from textrnn.cli import cli

from conftest import TINY_CLI

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from textrnn.train.tensorboard import TensorBoardLogger, scalars, tee  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_logger_writes_the_numbers_of_log_and_eval_events_at_their_steps(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger("start", {"run_dir": "checkpoints/a", "parameters": 10})
    logger("step", {"step": 1, "progress": 0.1})  # not written: per-step events carry no curves
    logger("log", {"step": 50, "lr": 0.01, "grad_norm": 1.5, "train_perplexity": 20.0, "tokens_per_sec": 1e4})
    logger(
        "eval",
        {
            "step": 100,
            "epoch": 1,
            "val_perplexity": 12.5,
            "val_bits_per_char": 3.64,
            "best_val_perplexity": float("inf"),  # before any validation: left out, not plotted as infinity
            "train_perplexity": None,  # null in metrics.jsonl: left out
            "improved": True,  # a flag, not a curve
            "note": "text",
        },
    )
    logger("end", {"steps": 100})
    logger.close()
    written = read_scalars(tmp_path / "tb")
    assert set(written) == {
        "log/lr",
        "log/grad_norm",
        "log/train_perplexity",
        "log/tokens_per_sec",
        "eval/epoch",
        "eval/val_perplexity",
        "eval/val_bits_per_char",
    }
    assert written["log/grad_norm"] == [(50, 1.5)]
    assert written["eval/val_perplexity"] == [(100, 12.5)]


def test_scalars_never_read_tensors():
    # A tensor would need a device-to-host copy; the logger only takes the Python numbers it is given.
    assert scalars({"step": 3, "loss": torch.tensor(1.0), "lr": 0.1, "numpy": np.float64(2.0)}) == {
        "lr": 0.1,
        "numpy": 2.0,
    }


def test_tee_hands_every_event_to_each_callback_and_closes_them():
    seen, closed = [], []

    class Callback:
        def __init__(self, name):
            self.name = name

        def __call__(self, event, info):
            seen.append((self.name, event))

        def close(self):
            closed.append(self.name)

    both = tee(Callback("printer"), None, Callback("logger"))
    both("eval", {})
    both.close()
    assert seen == [("printer", "eval"), ("logger", "eval")] and closed == ["printer", "logger"]


def test_train_with_tensorboard_logs_the_validation_curves(tiny_corpus):
    result = invoke(
        "train", "--corpus", tiny_corpus, *TINY_CLI, "--max-steps", "50", "--eval-every", "25", "--tensorboard", "tb"
    )
    assert result.exit_code == 0, result.output
    written = read_scalars("tb")
    for tag in ("eval/val_perplexity", "eval/val_bits_per_char", "eval/train_perplexity", "eval/lr"):
        assert [step for step, _ in written[tag]] == [25, 50]
    assert Path("checkpoints").is_dir()


def test_forecast_train_with_tensorboard_logs_validation_smape(tmp_path):
    hours = np.arange(24 * 30)
    lines = [f"2021-01-{1 + h // 24:02d} {h % 24:02d}:00,{100 + 20 * np.sin(2 * np.pi * h / 24):.3f}" for h in hours]
    (tmp_path / "load.csv").write_text("time,load\n" + "\n".join(lines) + "\n")
    result = invoke(
        "forecast", "train", "--csv", tmp_path / "load.csv", "--time-col", "time", "--target", "load",
        "--lookback", "24", "--hidden-size", "8", "--batch-size", "32", "--max-steps", "10", "--eval-every", "5",
        "--device", "cpu", "--tensorboard", "tb",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = read_scalars("tb")
    assert [step for step, _ in written["eval/val_smape"]] == [5, 10]
    assert "eval/val_mae" in written


def test_without_tensorboard_the_message_names_the_extra(tiny_corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    result = invoke("train", "--corpus", tiny_corpus, *TINY_CLI, "--max-steps", "2", "--tensorboard", "tb")
    assert result.exit_code == 1 and "pip install 'textrnn[tensorboard]'" in result.stderr
    assert not Path("checkpoints").exists()  # refused before training
