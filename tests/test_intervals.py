"""Prediction intervals (--quantiles) and the encoder-decoder (--decoder): validation, non-crossing quantiles,
pinball loss, interval score and coverage against hand-computed values, and both options end to end."""

import csv
import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_forecast import TINY_FORECAST, TINY_FORECAST_CLI, sine_csv

from textrnn.cli import cli
from textrnn.config import ForecastConfig, check_quantiles, from_dict
from textrnn.errors import TextrnnError
from textrnn.forecast.data import dataset_of, load_series
from textrnn.forecast.evaluate import evaluate_run, score
from textrnn.forecast.model import Forecaster, keep_order, load_forecast_run, ordered_quantiles, seasonal_lags
from textrnn.forecast.task import pinball_loss, train_forecaster
from textrnn.timeseries.metrics import interval_metrics, interval_score, pinball


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.mark.parametrize(
    "levels, message",
    [
        ("0,0.5,0.9", "each be in (0, 1)"),
        ("0.1,0.5,1", "each be in (0, 1)"),
        ("-0.1,0.5", "each be in (0, 1)"),
        ("0.1,0.5,0.5,0.9", "names a level twice"),
        ("0.9,0.5,0.1", "increasing order"),
        ("0.1,0.9", "must include 0.5"),
        ("0.1,half,0.9", "numbers separated by commas"),
    ],
)
def test_bad_quantiles_are_refused_with_the_fix(levels, message):
    with pytest.raises(TextrnnError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ForecastConfig(quantiles=levels)


def test_quantiles_are_parsed_from_text_lists_and_stored_json():
    assert check_quantiles("0.1, 0.5,0.9") == (0.1, 0.5, 0.9)
    assert ForecastConfig(quantiles=[0.25, 0.5, 0.75]).quantiles == (0.25, 0.5, 0.75)
    assert ForecastConfig().quantiles == ()
    assert "e.g. 0.1,0.5,0.9" in _error(lambda: check_quantiles("0.1,0.9"))


def _error(function) -> str:
    with pytest.raises(TextrnnError) as caught:
        function()
    return str(caught.value)


def test_cli_refuses_bad_quantiles_in_one_line(tmp_path):
    path = sine_csv(tmp_path / "load.csv")
    result = run("forecast", "train", "--csv", path, "--time-col", "time", "--target", "load", "--quantiles", "0.9,0.1")
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "increasing order" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_quantiles_never_cross_whatever_the_raw_outputs():
    raw = torch.tensor([[[5.0, -3.0, -40.0, 30.0, 1e4]], [[0.0, 0.0, 0.0, 0.0, 0.0]]])  # (B=2, H=1, Q=5)
    ordered = ordered_quantiles(raw, point=2)
    assert torch.all(ordered[..., 1:] > ordered[..., :-1])
    assert torch.equal(ordered[..., 2], raw[..., 2])  # the median is taken as it is
    generator = torch.Generator().manual_seed(0)
    raw = 10 * torch.randn(64, 6, 3, generator=generator)
    # never crossing; in float32 a step far below softplus's range rounds to 0 (equal, not crossed)
    assert torch.all(torch.diff(ordered_quantiles(raw, point=1), dim=-1) >= 0)


def test_a_quantile_forecaster_returns_sorted_quantiles_and_the_median_as_its_point_forecast():
    torch.manual_seed(0)
    config = ForecastConfig(hidden_size=8, horizon=3, lookback=12, quantiles=(0.1, 0.5, 0.9))
    model = Forecaster(config, input_size=5)
    window = torch.randn(4, 12, 5)
    every = model(window, all_quantiles=True)
    assert every.shape == (4, 3, 3)
    assert torch.all(every[..., 1:] > every[..., :-1])
    assert torch.equal(model(window), every[..., 1])


def test_runs_from_before_quantiles_and_the_decoder_keep_loading():
    stored = dataclasses.asdict(ForecastConfig(hidden_size=8, horizon=2))
    del stored["quantiles"], stored["decoder"]
    config = from_dict(ForecastConfig, stored)
    assert config.quantiles == () and config.decoder is False
    model = Forecaster(config, input_size=5)
    assert model.head.weight.shape == (2, 8)  # the head of a point forecaster, as before
    assert model(torch.randn(3, 90, 5)).shape == (3, 2)


def test_pinball_loss_against_hand_computed_values():
    actual = np.array([10.0, 20.0])
    quantiles = np.array([[8.0, 10.0, 12.0], [21.0, 22.0, 25.0]])  # levels 0.1, 0.5, 0.9
    # y=10: 0.1*2, 0, 0.1*2 ; y=20: 0.9*1, 0.5*2, 0.1*5 -> (0.2 + 0 + 0.2 + 0.9 + 1.0 + 0.5) / 6
    assert pinball(actual, quantiles, (0.1, 0.5, 0.9)) == pytest.approx(2.8 / 6)
    torch_loss = pinball_loss(
        torch.tensor(quantiles)[None], torch.tensor(actual)[None], torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    )
    assert torch_loss.item() == pytest.approx(2.8 / 6)


def test_interval_score_against_hand_computed_values():
    # 80% interval [8, 12]: inside -> width 4; y=5 -> 4 + (8-5)/0.1 = 34; y=14 -> 4 + (14-12)/0.1 = 24
    actual = np.array([10.0, 5.0, 14.0])
    lower, upper = np.full(3, 8.0), np.full(3, 12.0)
    assert interval_score(actual, lower, upper, 0.1, 0.9) == pytest.approx((4 + 34 + 24) / 3)


def test_coverage_of_quantiles_of_a_known_distribution():
    random = np.random.default_rng(0)
    actual = random.standard_normal(200_000)
    z = 1.2815515655446004  # the 0.9 quantile of the standard normal
    quantiles = np.tile([-z, -0.6744897501960817, 0.0, 0.6744897501960817, z], (len(actual), 1))
    scores = interval_metrics(actual, quantiles, (0.1, 0.25, 0.5, 0.75, 0.9))
    assert list(scores["coverage"]) == ["0.1-0.9", "0.25-0.75"]
    assert scores["coverage"]["0.1-0.9"] == pytest.approx(0.8, abs=0.005)
    assert scores["coverage"]["0.25-0.75"] == pytest.approx(0.5, abs=0.005)
    assert scores["width"]["0.1-0.9"] == pytest.approx(2 * z)
    assert scores["points"] == len(actual)


def test_seasonal_lags_point_at_whole_seasons_before_each_target():
    lags = seasonal_lags(lookback=168, horizon=26, season=24)
    assert lags.shape == (26, 7)
    # step 0 (the time right after the window): 24, 48, ... 168 steps before it
    assert lags[0].tolist() == [144, 120, 96, 72, 48, 24, 0]
    # step 25 lies one day and an hour ahead: the most recent observed same hour is 48 steps before it
    assert lags[25, 0].item() == 168 + 25 - 48
    assert lags.min().item() >= 0 and lags.max().item() < 168


@pytest.mark.parametrize("decoder", [False, True])
def test_quantile_models_train_score_and_predict_their_columns(tmp_path, decoder):
    path = sine_csv(tmp_path / "load.csv", noise=1.0)
    config = ForecastConfig(
        csv=(str(path),),
        time_col="time",
        target=("load",),
        horizon=4,
        quantiles=(0.1, 0.5, 0.9),
        decoder=decoder,
        **TINY_FORECAST,
    )
    summary = train_forecaster(config, tmp_path / "run")
    intervals = summary["intervals"]["load"]
    assert set(intervals) >= {"coverage", "pinball", "interval_score", "width"}
    assert 0.0 <= intervals["coverage"]["0.1-0.9"] <= 1.0
    out = tmp_path / "forecast.csv"
    result = run("forecast", "predict", "--checkpoint", tmp_path / "run", "--steps", 6, "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["time", "load", "load_q0.1", "load_q0.5", "load_q0.9"]
    assert len(rows) == 7
    for row in rows[1:]:
        low, median, high = (float(cell) for cell in row[2:])
        assert low < median < high and float(row[1]) == pytest.approx(median)


def test_the_decoder_option_trains_and_predicts_through_the_cli(tmp_path):
    path = sine_csv(tmp_path / "load.csv")
    base = ["--csv", path, "--time-col", "time", "--target", "load", *TINY_FORECAST_CLI]
    result = run("forecast", "train", *base, "--horizon", 24, "--decoder", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    stored = from_dict(
        ForecastConfig, __import__("json").loads((tmp_path / "run" / "config.json").read_text())["forecast"]
    )
    assert stored.decoder and stored.season == 24  # the season the decoder reads is stored with the run
    result = run("forecast", "predict", "--checkpoint", tmp_path / "run", "--steps", 30)
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 31
    result = run("forecast", "train", *base, "--decoder", "--bidirectional", "--out", tmp_path / "other")
    assert result.exit_code == 1 and "--decoder" in result.output


def test_forking_forecasts_from_every_position_of_the_second_half_as_if_the_window_ended_there():
    torch.manual_seed(0)
    config = ForecastConfig(hidden_size=8, horizon=3, lookback=10, quantiles=(0.1, 0.5, 0.9), forking=True)
    model = Forecaster(config, input_size=5).eval()
    window = torch.randn(2, 10, 5)
    forking = model(window, all_quantiles=True, from_position=5)
    assert forking.shape == (2, 5, 3, 3)
    for position in range(5, 10):  # a unidirectional encoder: the state at t has read the window up to t only
        alone = model(window[:, : position + 1], all_quantiles=True)
        assert torch.allclose(forking[:, position - 5], alone, atol=1e-6)


def test_forking_trains_and_is_refused_where_it_would_see_the_targets(tmp_path):
    path = sine_csv(tmp_path / "load.csv", noise=1.0)
    options = dict(csv=(str(path),), time_col="time", target=("load",), horizon=6, forking=True)
    training = {**TINY_FORECAST, "hidden_size": 16, "max_steps": 100, "eval_every": 50, "lr": 1e-2}
    summary = train_forecaster(ForecastConfig(**options, **training), tmp_path / "run")
    assert summary["test"]["load"]["smape"] < summary["baselines"]["persistence"]["load"]["smape"]
    for other in ({"decoder": True}, {"bidirectional": True}):
        with pytest.raises(TextrnnError, match="--forking"):
            ForecastConfig(**options, **other)


def test_plots_draw_the_interval_band(tmp_path):
    pytest.importorskip("matplotlib")
    from textrnn.forecast.panels import forecast_panels, test_panels
    from textrnn.forecast.predict import predict_run

    path = sine_csv(tmp_path / "load.csv", noise=1.0)
    base = ["--csv", path, "--time-col", "time", "--target", "load", *TINY_FORECAST_CLI, "--quantiles", "0.1,0.5,0.9"]
    result = run("forecast", "train", *base, "--out", tmp_path / "run", "--plot", tmp_path / "test.png")
    assert result.exit_code == 0, result.output
    assert "0.1-0.9" in result.output and "coverage" in result.output  # the interval table
    result = run("forecast", "predict", "--checkpoint", tmp_path / "run", "--plot", tmp_path / "future.png")
    assert result.exit_code == 0, result.output
    for name in ("test.png", "future.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    forecasts = predict_run(tmp_path / "run", steps=5)["forecasts"]
    (band,) = forecast_panels(forecasts, history_points=24)[0]["bands"]
    assert band[0] == "0.1-0.9 interval" and np.all(band[2] < band[3])
    results = evaluate_run(tmp_path / "run")
    assert test_panels(results["dataset"], results["arrays"])[0]["bands"]


def test_keep_order_keeps_the_median_and_uncrosses_narrowed_intervals():
    quantiles = torch.tensor([[5.0, 3.0, 4.0, 3.5, 9.0]])  # median (index 2) 4.0; 3.0 and 3.5 crossed it
    assert keep_order(quantiles, 2).tolist() == [[3.0, 3.0, 4.0, 4.0, 9.0]]


def test_calibration_makes_the_validation_part_covered_as_nominal(tmp_path):
    path = sine_csv(tmp_path / "load.csv", noise=3.0)
    config = ForecastConfig(
        csv=(str(path),), time_col="time", target=("load",), horizon=2, quantiles=(0.1, 0.5, 0.9), **TINY_FORECAST
    )
    summary = train_forecaster(config, tmp_path / "run")
    model, _, stored = load_forecast_run(tmp_path / "run")
    assert model.interval_offsets.abs().sum() > 0  # stored with the best weights
    series, _ = load_series(config)
    dataset = dataset_of(config, series, stored["data"]["season"])
    coverage = score(model, dataset, "val")["intervals_overall"]["coverage"]["0.1-0.9"]
    assert coverage >= 0.8
    assert (
        summary["intervals"]["load"]["coverage"]["0.1-0.9"]
        == evaluate_run(tmp_path / "run")["intervals"]["load"]["coverage"]["0.1-0.9"]
    )
