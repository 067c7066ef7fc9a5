"""Rolling-origin backtests: the folds' origins and windows, one model or retrained per fold, the JSON, bad input."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_forecast import TINY_FORECAST, sine_csv

from textrnn.cli import cli
from textrnn.config import ForecastConfig
from textrnn.errors import TextrnnError
from textrnn.forecast.backtest import backtest, plan_folds
from textrnn.forecast.task import train_forecaster

HOURS = 24 * 40  # the sine file: 960 hourly points, a test part of 96


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backtest")
    path = sine_csv(folder / "load.csv", noise=1.0)
    config = ForecastConfig(csv=(str(path),), time_col="time", target=("load",), horizon=2, **TINY_FORECAST)
    train_forecaster(config, folder / "run")
    return folder, path


def _time(hour: int) -> str:
    return str(np.datetime64("2021-01-01T00:00", "s") + np.timedelta64(3600 * hour, "s"))


def test_folds_split_the_test_part_at_rolling_origins(trained):
    folder, _ = trained
    result = backtest(folder / "run", folds=3)
    assert result["fold_size"] == 32  # the test part (96 points) split evenly
    assert [fold["origin"] for fold in result["folds"]] == [_time(HOURS - 96), _time(HOURS - 64), _time(HOURS - 32)]
    assert [fold["end"] for fold in result["folds"]] == [_time(HOURS - 64), _time(HOURS - 32), None]
    for fold in result["folds"]:
        # every window whose two targets lie in the fold: 32 - 2 + 1 origins, each scored on 2 steps
        assert fold["test"]["load"]["points"] == 31 * 2
        assert set(fold["baselines"]) == {"persistence", "seasonal_naive"}
    smapes = [fold["overall"]["smape"] for fold in result["folds"]]
    assert result["mean"]["overall"]["smape"] == pytest.approx(np.mean(smapes))
    assert result["std"]["overall"]["smape"] == pytest.approx(np.std(smapes, ddof=1))
    assert result["mean"]["overall"]["points"] == 3 * 62
    assert result["mean"]["baselines_overall"]["seasonal_naive"]["smape"] == pytest.approx(
        np.mean([fold["baselines_overall"]["seasonal_naive"]["smape"] for fold in result["folds"]])
    )


def test_a_given_fold_size_and_too_many_folds(trained):
    folder, _ = trained
    result = backtest(folder / "run", folds=2, fold_size=10)
    assert [fold["origin"] for fold in result["folds"]] == [_time(HOURS - 20), _time(HOURS - 10)]
    with pytest.raises(TextrnnError, match="test part holds 96"):
        backtest(folder / "run", folds=4, fold_size=30)
    with pytest.raises(TextrnnError, match="fewer than the --horizon"):
        backtest(folder / "run", folds=60)
    with pytest.raises(TextrnnError, match="too few to train"):
        backtest(folder / "run", folds=40, fold_size=24, retrain=True, out_dir=folder / "never")


def test_plan_folds_refuses_zero_folds():
    times = np.datetime64("2021-01-01", "s") + np.timedelta64(3600, "s") * np.arange(100)
    with pytest.raises(TextrnnError, match="at least 1"):
        plan_folds(ForecastConfig(lookback=4), times, 0, None, retrain=False)


def test_retraining_per_fold_trains_on_the_rows_before_each_origin(trained, tmp_path):
    folder, _ = trained
    result = backtest(folder / "run", folds=2, retrain=True, out_dir=tmp_path / "folds", limits={"max_steps": 5})
    assert len(result["folds"]) == 2 and result["retrain"]
    for fold in result["folds"]:
        rows = list(csv.reader((tmp_path / "folds" / f"fold-{fold['fold']}" / "data" / "load.csv").open()))
        assert rows[0] == ["time", "load", "other"]
        assert max(row[0] for row in rows[1:]) < fold["origin"].replace("T", " ")
        assert len(rows) - 1 == HOURS - (96 if fold["fold"] == 1 else 48)
        assert fold["checkpoint"].endswith("run")
        assert fold["test"]["load"]["points"] == (48 - 1) * 2


def test_cli_json_and_table(trained):
    folder, _ = trained
    result = run("forecast", "backtest", "--checkpoint", folder / "run", "--folds", 2, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) >= {"folds", "mean", "std"}
    assert {"origin", "test", "baselines"} <= set(data["folds"][0])
    result = run("forecast", "backtest", "--checkpoint", folder / "run", "--folds", 2)
    assert result.exit_code == 0, result.output
    assert "mean" in result.output and "seasonal naive sMAPE" in result.output
    result = run("forecast", "backtest", "--checkpoint", folder / "run", "--folds", 20, "--fold-size", 24)
    assert result.exit_code == 1
    assert result.output.startswith("error:") and "use fewer --folds" in result.output
    result = run("forecast", "backtest", "--checkpoint", folder / "run", "--max-seconds", 5)
    assert result.exit_code == 1 and "--retrain" in result.output
