"""Forecasting end to end: the model learns a daily sine, runs resume exactly, the CLI works and refuses bad input."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.config import ForecastConfig
from textrnn.errors import TextrnnError
from textrnn.forecast.task import train_forecaster
from textrnn.timeseries.metrics import metrics

TINY_FORECAST = {
    "lookback": 24,
    "hidden_size": 8,
    "batch_size": 32,
    "max_steps": 20,
    "eval_every": 10,
    "warmup_steps": 0,
    "device": "cpu",
}
TINY_FORECAST_CLI = [
    "--lookback", "24", "--hidden-size", "8", "--batch-size", "32", "--max-steps", "20",
    "--eval-every", "10", "--warmup-steps", "0", "--device", "cpu",
]  # fmt: skip
FORECAST_JSON_KEYS = ("test", "baselines", "elapsed_sec", "checkpoint")


def sine_csv(path, hours=24 * 40, noise=0.0, seed=0, start="2021-01-01T00:00"):
    """An hourly load-like series with a daily period, ISO times, columns time,load,other."""
    random = np.random.default_rng(seed)
    stamps = np.datetime64(start, "s") + np.timedelta64(3600, "s") * np.arange(hours)
    load = 100 + 20 * np.sin(2 * np.pi * np.arange(hours) / 24) + noise * random.standard_normal(hours)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "load", "other"])
        for stamp, value in zip(stamps, load):
            writer.writerow([str(stamp).replace("T", " "), f"{value:.4f}", f"{value * 2:.4f}"])
    return path


@pytest.fixture
def series_csv(tmp_path):
    return sine_csv(tmp_path / "load.csv")


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def test_the_model_learns_a_daily_sine_far_better_than_the_baselines(series_csv, tmp_path):
    config = ForecastConfig(
        csv=(str(series_csv),),
        time_col="time",
        target=("load",),
        **{**TINY_FORECAST, "hidden_size": 16, "max_steps": 300, "eval_every": 100, "lr": 1e-2},
    )
    summary = train_forecaster(config, tmp_path / "run")
    persistence = summary["baselines"]["persistence"]["load"]["smape"]
    # A noiseless sine: the seasonal-naive forecast is exact and persistence is far off.
    assert summary["baselines"]["seasonal_naive"]["load"]["smape"] == pytest.approx(0.0, abs=1e-6)
    assert persistence > 3.0
    assert summary["test"]["load"]["smape"] < persistence / 5, summary["test"]


def test_a_killed_and_resumed_run_ends_with_the_same_weights(series_csv, tmp_path):
    # A seed near the top of its range: the per-epoch shuffle seed must not overflow.
    config = ForecastConfig(csv=(str(series_csv),), time_col="time", target=("load",), seed=2**62, **TINY_FORECAST)
    straight = train_forecaster(config, tmp_path / "straight")
    stops = []
    first = train_forecaster(config, tmp_path / "resumed", should_stop=lambda: stops.append(1) or len(stops) >= 7)
    assert first["interrupted"] and first["steps"] == 7
    resumed = train_forecaster(config, tmp_path / "resumed", resume=True)
    assert resumed["steps"] == straight["steps"] == 20
    weights = [torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("straight", "resumed")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert resumed["test"] == straight["test"]


def test_cli_train_eval_predict_and_json(series_csv, tmp_path):
    result = run("forecast", "train", "--csv", series_csv, "--time-col", "time", "--target", "load,other",
                 *TINY_FORECAST_CLI, "--horizon", "3", "--out", "checkpoints/a", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert all(key in summary for key in FORECAST_JSON_KEYS)
    assert set(summary["test"]) == {"load", "other"}
    for method in ("persistence", "seasonal_naive"):
        assert set(summary["baselines"][method]["load"]) >= {"smape", "mape", "mae", "rmse"}
    assert "load: 960 rows, step 1 hour" in result.stderr  # the cleaning report

    evaluated = json.loads(run("forecast", "eval", "--json").stdout)  # the newest forecasting run
    assert evaluated["test"] == summary["test"]
    # A new file of the same shape, scored with the stored scalers.
    other = sine_csv(tmp_path / "new.csv", hours=24 * 5, start="2022-06-01T00:00")
    result = run("forecast", "eval", "--checkpoint", "checkpoints/a", "--csv", other, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["load"]["points"] == (24 * 5 - 24 - 3 + 1) * 3

    result = run("forecast", "predict", "--checkpoint", "checkpoints/a", "--steps", "7", "--out", "future.csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(open("future.csv")))
    assert rows[0] == ["time", "load", "other"] and len(rows) == 8  # 7 steps, recursively past the horizon of 3
    assert rows[1][0] == "2021-02-10 00:00:00" and rows[-1][0] == "2021-02-10 06:00:00"
    assert all(50 < float(value) < 300 for row in rows[1:] for value in row[1:])


def test_cli_compare_tabulates_cells_next_to_the_baselines(series_csv):
    result = run("forecast", "compare", "--cells", "gru,lstm", "--csv", series_csv, "--time-col", "time",
                 "--target", "load", *TINY_FORECAST_CLI, "--max-steps", "5")  # fmt: skip
    assert result.exit_code == 0, result.output
    for word in ("gru", "lstm", "persistence", "seasonal naive", "test sMAPE"):
        assert word in result.stdout


def test_language_model_commands_refuse_a_forecasting_run(series_csv):
    assert run("forecast", "train", "--csv", series_csv, "--time-col", "time", "--target", "load",
               *TINY_FORECAST_CLI, "--out", "runs/f").exit_code == 0  # fmt: skip
    result = run("sample", "--checkpoint", "runs/f", "--prefix", "the")
    assert result.exit_code == 1 and "is a forecasting run: use textrnn forecast eval" in result.stderr
    result = run("sample", "--prefix", "the")  # the newest run of the right kind: there is none
    assert result.exit_code == 1 and "no trained runs" in result.stderr


def test_plot_writes_a_png_or_says_what_is_missing(series_csv, monkeypatch):
    args = ["forecast", "train", "--csv", series_csv, "--time-col", "time", "--target", "load", *TINY_FORECAST_CLI]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        result = run(*args, "--plot", "test.png")
        assert result.exit_code == 1 and "pip install 'textrnn[plot]'" in result.stderr
        return
    result = run(*args, "--plot", "test.png")
    assert result.exit_code == 0, result.output
    with open("test.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as if it were not installed
    result = run("forecast", "predict", "--plot", "future.png")
    assert result.exit_code == 1 and "pip install 'textrnn[plot]'" in result.stderr


@pytest.mark.parametrize(
    "content, options, message",
    [
        (None, [], "does not exist"),
        ("time,load\n2021-01-01 00:00,1\n", ["--target", "MW"], "has no column 'MW'"),
        ("time,load\n2021-01-01 00:00,abc\n2021-01-01 01:00,2\n", [], "is not numeric: row 2 holds 'abc'"),
        ("time,load\n2021-01-01 00:00,1\n2021-01-01 01:00,2\n", [], "too short"),
        ("time,load\n2021-01-01 00:00,\n2021-01-01 01:00,NA\n", [], "every cell is missing"),
        ("time,load\nmonday,1\ntuesday,2\n", [], "not a time this reader knows"),
        ("time,load\n", [], "has a header but no rows"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, content, options, message):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    result = run("forecast", "train", "--csv", path, "--time-col", "time", "--target", "load", *options,
                 *TINY_FORECAST_CLI)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_missing_options_and_impossible_sizes_are_refused(series_csv):
    assert "give --csv" in run("forecast", "train", "--target", "load").stderr
    assert "give --target" in run("forecast", "train", "--csv", series_csv).stderr
    result = run("forecast", "train", "--csv", series_csv, "--time-col", "time", "--target", "load", "--lookback", "0")
    assert result.exit_code == 1 and "--lookback must be in [1, 100000]" in result.stderr
    with pytest.raises(TextrnnError, match="--horizon"):
        ForecastConfig(horizon=0)


def test_several_files_train_jointly_with_their_own_scalers(tmp_path):
    from textrnn.forecast.data import load_series

    first = sine_csv(tmp_path / "north.csv")
    second = sine_csv(tmp_path / "south.csv", start="2021-03-01T00:00")
    with open(second) as handle:  # the same shape, ten times the load
        rows = [line.split(",") for line in handle.read().splitlines()]
    second.write_text("\n".join([",".join(rows[0])] + [f"{t},{float(a) * 10},{b}" for t, a, b in rows[1:]]) + "\n")
    config = ForecastConfig(csv=(str(first), str(second)), time_col="time", target=("load",), **TINY_FORECAST)
    series, files = load_series(config)
    assert [item.name for item in series] == ["north:load", "south:load"] and len(files) == 2
    summary = train_forecaster(config, tmp_path / "run")
    assert set(summary["test"]) == {"north:load", "south:load"}
    scalers = summary["dataset"].scalers
    assert scalers[1].maximum == pytest.approx(10 * scalers[0].maximum, rel=1e-3)


def test_the_json_reports_the_smape_of_step_24_beside_the_pooled_figure(series_csv, tmp_path):
    config = ForecastConfig(
        csv=(str(series_csv),), time_col="time", target=("load",), **{**TINY_FORECAST, "horizon": 24, "max_steps": 4}
    )
    summary = train_forecaster(config, tmp_path / "run")
    arrays = summary["arrays"]
    alone = metrics(arrays["actual"][:, 23], arrays["predicted"][:, 23])["smape"]
    assert summary["overall"]["smape_step24"] == pytest.approx(alone)
    assert summary["overall"]["smape"] != pytest.approx(alone)
    assert summary["baselines_overall"]["seasonal_naive"]["smape_step24"] is not None
    short = ForecastConfig(csv=(str(series_csv),), time_col="time", target=("load",), **TINY_FORECAST)
    assert train_forecaster(short, tmp_path / "short")["overall"]["smape_step24"] is None
