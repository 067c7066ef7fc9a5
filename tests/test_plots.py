"""textrnn plot, compare --plot and forecast compare --plot: PNGs of the curves, clear refusals."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.errors import TextrnnError

from conftest import TINY_CLI

pytest.importorskip("matplotlib")

from textrnn.plots import plot_runs, read_metrics  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def fake_run(path, task, records):
    """A run directory holding only what plot reads: config.json's task and metrics.jsonl."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"task": task}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def language_model_records(scale=1.0):
    return [
        {
            "step": step,
            "tokens": step * 64,
            "elapsed_sec": step * 0.1,
            "train_perplexity": scale * 30 / step,
            "val_perplexity": None if step == 2 else scale * 32 / step,  # null values are skipped
            "val_bits_per_char": 5 - step / 4,
        }
        for step in (1, 2, 3, 4)
    ]


def assert_png(path, smallest=5_000, largest=300_000):
    data = path.read_bytes()
    assert data[:8] == PNG
    assert smallest < len(data) < largest


def test_plot_overlays_language_model_runs(tmp_path):
    first = fake_run(tmp_path / "gru", "charlm", language_model_records())
    second = fake_run(tmp_path / "lstm", "charlm", language_model_records(0.8))
    result = invoke("plot", first, second, "--out", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "curves.png")


def test_plot_draws_forecasting_runs_as_validation_smape(tmp_path):
    records = [{"step": step, "elapsed_sec": step / 10, "val_smape": 10 / step, "val_mae": 1.0} for step in (5, 10)]
    run = fake_run(tmp_path / "forecast-gru", "forecast", records)
    assert read_metrics(run)[0] == "forecast"
    assert_png(plot_runs([run], tmp_path / "smape.png"))


def test_plot_of_a_trained_run_and_the_newest_run_by_default(tiny_corpus):
    args = ["train", "--corpus", tiny_corpus, *TINY_CLI, "--max-steps", "6", "--eval-every", "3", "--out", "runs/a"]
    assert invoke(*args).exit_code == 0
    assert invoke("plot", "runs/a", "--out", "a.png").exit_code == 0
    assert_png(Path("a.png"))
    assert invoke("plot").exit_code == 1  # nothing in checkpoints/: the newest-run error
    assert invoke(*args[:-1], "checkpoints/b").exit_code == 0
    assert invoke("plot").exit_code == 0
    assert_png(Path("curves.png"))


def test_missing_or_empty_metrics_and_mixed_tasks_are_refused(tmp_path):
    result = invoke("plot", tmp_path / "nowhere")
    assert result.exit_code == 1 and "nowhere is not a run directory" in result.stderr
    (tmp_path / "fresh").mkdir()
    result = invoke("plot", tmp_path / "fresh")
    assert result.exit_code == 1 and "metrics.jsonl is missing" in result.stderr
    empty = fake_run(tmp_path / "empty", "charlm", [])
    result = invoke("plot", empty)
    assert result.exit_code == 1 and "metrics.jsonl is empty" in result.stderr
    (empty / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "val_perp')
    with pytest.raises(TextrnnError, match="line 2 is not JSON"):
        read_metrics(empty)
    forecast = fake_run(tmp_path / "f", "forecast", [{"step": 1, "val_smape": 3.0}])
    language = fake_run(tmp_path / "l", "charlm", language_model_records())
    with pytest.raises(TextrnnError, match="cannot overlay"):
        plot_runs([forecast, language], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_the_message_names_the_extra(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "gru", "charlm", language_model_records())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = invoke("plot", run)
    assert result.exit_code == 1 and "pip install 'textrnn[plot]'" in result.stderr


def test_compare_writes_the_curves_next_to_its_table(tiny_corpus):
    result = invoke(
        "compare", "--cells", "gru,rnn_tanh", "--corpus", tiny_corpus, *TINY_CLI, "--max-steps", "6",
        "--eval-every", "3", "--out", "runs/c", "--plot", "compare.png",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_png(Path("compare.png"))


def test_forecast_compare_draws_validation_smape(tmp_path):
    hours = np.arange(24 * 30)
    lines = [f"2021-01-{1 + h // 24:02d} {h % 24:02d}:00,{100 + 20 * np.sin(2 * np.pi * h / 24):.3f}" for h in hours]
    (tmp_path / "load.csv").write_text("time,load\n" + "\n".join(lines) + "\n")
    result = invoke(
        "forecast", "compare", "--cells", "gru,lstm", "--csv", tmp_path / "load.csv", "--time-col", "time",
        "--target", "load", "--lookback", "24", "--hidden-size", "8", "--batch-size", "32", "--max-steps", "10",
        "--eval-every", "5", "--device", "cpu", "--out", "runs/f", "--plot", "smape.png",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_png(Path("smape.png"))
