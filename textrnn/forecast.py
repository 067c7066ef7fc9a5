"""Forecasting with a ``Forecaster``: the series of a run, scores next to the baselines, forecasts past the end,
plots. Training is ``forecast_task.train_forecaster`` on the one trainer.

A forecasting run directory holds ``config.json`` (the config, the files with their checksums,
each series' scaler and cleaning report), ``last.pt`` (weights and trainer state), ``best.pt``
(the weights with the best validation sMAPE), ``metrics.jsonl`` and ``results.json`` (the test scores).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from textrnn import checkpoint
from textrnn.config import ForecastConfig
from textrnn.distributed import resolve_device
from textrnn.errors import TextrnnError
from textrnn.models import Forecaster
from textrnn.timeseries import (
    Dataset,
    Scaler,
    Series,
    baseline_forecasts,
    build_dataset,
    clean,
    default_season,
    interval_metrics,
    interval_pairs,
    metrics,
    prediction_inputs,
    read_csv,
    read_future,
    window_indices,
)

EVAL_BATCH = 4096  # windows per forward pass when scoring


# ----------------------------------------------------------------------------- data


def load_series(config: ForecastConfig, paths=None, step_seconds: int | None = None) -> tuple[list[Series], list[dict]]:
    """Read and clean every ``--target`` column of every file: one series per (file, column)."""
    paths = [str(path) for path in (paths or config.csv)]
    if not paths:
        raise TextrnnError("no data: give --csv FILE (several allowed)")
    if not config.target:
        raise TextrnnError("no target: give --target COLUMN (several allowed)")
    stems = [Path(path).stem for path in paths]
    series, files = [], []
    for number, path in enumerate(paths):
        table = read_csv(
            path,
            config.time_col,
            list(config.target),
            config.time_format,
            dayfirst=config.dayfirst,
            covariates=[*config.covariates, *config.future_covariates],
        )
        files.append(
            {
                "path": str(Path(path).resolve()),
                "sha256": table.sha256,
                "rows": table.rows,
                "time_format": table.time_format,
            }
        )
        for column, values in table.columns.items():
            if len(paths) == 1:
                name = column
            else:
                name = f"{stems[number]}:{column}" if stems.count(stems[number]) == 1 else f"{number}:{column}"
            series.append(clean(table.times, values, name, config.max_gap, step_seconds, table.covariates))
    steps = sorted({item.step_seconds for item in series})
    if len(steps) > 1:
        raise TextrnnError(
            f"the series have different steps ({', '.join(item.report['step'] + ' for ' + item.name for item in series)}): "
            "train them separately or resample them to one step"
        )
    return series, files


def dataset_of(
    config: ForecastConfig, series: list[Series], season: int, scalers=None, covariate_scalers=None
) -> Dataset:
    """The windows of ``config`` over ``series`` (see ``timeseries.build_dataset``)."""
    return build_dataset(
        series,
        config.lookback,
        config.horizon,
        config.calendar,
        config.val_fraction,
        config.test_fraction,
        season,
        scalers=scalers,
        observed=config.covariates,
        known=config.future_covariates,
        country=config.country,
        covariate_scalers=covariate_scalers,
    )


def season_of(config: ForecastConfig, series: list[Series]) -> int:
    return config.season or default_season(series[0].step_seconds)


def describe_data(series: list[Series], files: list[dict], dataset: Dataset, config: ForecastConfig) -> dict:
    """What ``config.json`` keeps about the data: enough to check, rescale and explain it later."""
    return {
        "files": files,
        "step_seconds": series[0].step_seconds,
        "season": dataset.season,
        "input_size": int(dataset.features.shape[1]),
        "windows": {split: int(len(starts)) for split, starts in dataset.starts.items()},
        "series": [
            {
                "name": item.name,
                "scaler": dataclasses.asdict(scaler),
                "covariate_scalers": {name: dataclasses.asdict(each) for name, each in covariates.items()},
                "report": item.report,
                "first_test_time": first_test,
            }
            for item, scaler, covariates, first_test in zip(
                series, dataset.scalers, dataset.covariate_scalers, dataset.first_test_time
            )
        ],
    }


def stored_scalers(config: dict) -> list[Scaler]:
    return [Scaler(**item["scaler"]) for item in config["data"]["series"]]


def stored_covariate_scalers(config: dict) -> list[dict[str, Scaler]]:
    return [
        {name: Scaler(**each) for name, each in item.get("covariate_scalers", {}).items()}
        for item in config["data"]["series"]
    ]


# ----------------------------------------------------------------------------- scoring


def future_features(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The known-future features (B, horizon, F - 1) of the target times ``targets`` (B, horizon): every
    feature column but the target itself (column 0), i.e. the calendar, which is known ahead."""
    return features[targets][..., 1:]


def predict_windows(
    model: Forecaster, features: torch.Tensor, starts: np.ndarray, lookback: int, all_quantiles: bool = False
) -> np.ndarray:
    """Scaled forecasts (W, horizon) for the windows starting at ``starts``; (W, horizon, Q) with ``all_quantiles``."""
    device = features.device
    horizon = model.config.horizon
    outputs = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(starts), EVAL_BATCH):
            chunk = torch.from_numpy(starts[begin : begin + EVAL_BATCH]).to(device)
            inputs, targets = window_indices(chunk, lookback, horizon, xp=torch)
            forecast = model(features[inputs], future_features(features, targets), all_quantiles=all_quantiles)
            outputs.append(forecast.float().cpu().numpy())
    model.train(was_training)
    shape = (0, horizon, model.outputs) if all_quantiles else (0, horizon)
    return np.concatenate(outputs) if outputs else np.zeros(shape, np.float32)


def score(model: Forecaster, dataset: Dataset, split: str, features: torch.Tensor | None = None) -> dict:
    """Metrics of the model and of the baselines on one split, per series and overall, in the data's units.

    Returns ``test`` ({series: metrics}), ``overall``, ``baselines`` ({persistence|seasonal_naive: {series: metrics}}),
    ``baselines_overall`` and, for plots, ``arrays`` (times, actual, predicted per series; not JSON).
    """
    if features is None:
        features = torch.from_numpy(dataset.features).to(next(model.parameters()).device)
    starts = dataset.starts[split]
    lookback, horizon = dataset.lookback, dataset.horizon
    every_quantile = predict_windows(model, features, starts, lookback, all_quantiles=True).astype(np.float64)
    scaled = every_quantile[..., model.point]  # (W, horizon): the point forecast
    ids = dataset.series_of[starts]
    minimum = np.array([s.minimum for s in dataset.scalers])[ids][:, None]
    span = np.array([s.span for s in dataset.scalers])[ids][:, None]
    predicted = scaled * span + minimum
    _, targets = window_indices(starts, lookback, horizon)
    actual = dataset.raw[targets]
    baselines = baseline_forecasts(dataset.raw, starts, lookback, horizon, dataset.season)

    def per_series(forecast: np.ndarray) -> dict:
        return {
            name: metrics(actual[ids == number], forecast[ids == number])
            for number, name in enumerate(dataset.names)
            if (ids == number).any()
        }

    results = {
        "test": per_series(predicted),
        "overall": metrics(actual, predicted),
        "baselines": {name: per_series(forecast) for name, forecast in baselines.items()},
        "baselines_overall": {name: metrics(actual, forecast) for name, forecast in baselines.items()},
        "arrays": {"targets": targets, "ids": ids, "actual": actual, "predicted": predicted},
    }
    if model.config.quantiles:  # the quantiles in the data's units, (W, horizon, Q), and their scores
        quantiles = every_quantile * span[..., None] + minimum[..., None]
        results["arrays"].update(quantiles=quantiles, levels=model.config.quantiles)
        results.update(interval_results(model.config.quantiles, actual, quantiles, ids, dataset.names))
    return results


def interval_results(levels, actual: np.ndarray, quantiles: np.ndarray, ids: np.ndarray, names: list[str]) -> dict:
    """``intervals`` ({series: ``timeseries.interval_metrics``}) and ``intervals_overall`` of ``quantiles``
    (W, horizon, Q) against ``actual`` (W, horizon), the windows' series being ``ids`` (W,)."""
    return {
        "intervals": {
            name: interval_metrics(actual[ids == number], quantiles[ids == number], levels)
            for number, name in enumerate(names)
            if (ids == number).any()
        },
        "intervals_overall": interval_metrics(actual, quantiles, levels),
    }


def calibrate(model: Forecaster, dataset: Dataset, features: torch.Tensor | None = None) -> np.ndarray:
    """Widen (or narrow) each central interval of a quantile forecaster so that it covers its nominal share of
    the validation part, step by step: conformalized quantile regression (Romano, Patterson and Candès, 2019).

    For the interval between levels a < b and the validation windows' targets y, the conformity score is
    max(q_a - y, y - q_b); its ceil((n + 1)(b - a)) / n empirical quantile c (per step ahead, in scaled units)
    is subtracted from q_a and added to q_b. Sets and returns ``model.interval_offsets`` (horizon, Q).
    """
    levels = model.config.quantiles
    model.interval_offsets.zero_()
    if features is None:
        features = torch.from_numpy(dataset.features).to(next(model.parameters()).device)
    starts = dataset.starts["val"]
    quantiles = predict_windows(model, features, starts, dataset.lookback, all_quantiles=True).astype(np.float64)
    _, targets = window_indices(starts, dataset.lookback, dataset.horizon)
    actual = dataset.values[targets].astype(np.float64)  # (W, horizon), scaled like the forecasts
    offsets = np.zeros((dataset.horizon, len(levels)))
    count = len(starts)
    for low, high in interval_pairs(levels):
        scores = np.maximum(quantiles[..., low] - actual, actual - quantiles[..., high])  # (W, horizon)
        rank = min(1.0, math.ceil((count + 1) * (levels[high] - levels[low])) / count)
        correction = np.quantile(scores, rank, axis=0, method="higher")  # (horizon,)
        offsets[:, low], offsets[:, high] = -correction, correction
    model.interval_offsets.copy_(torch.from_numpy(offsets))
    return offsets


# ----------------------------------------------------------------------------- evaluation and prediction


def evaluate_run(checkpoint_dir=None, csv=None, weights=None, device="cpu") -> dict:
    """Score a stored forecaster: on the test split of its own files, or on every window of new files
    (``csv``, same columns, in the order of the training files) with the stored scalers."""
    model, config, stored = checkpoint.load_forecast_run(checkpoint_dir, weights, resolve_device(device))
    step = stored["data"]["step_seconds"]
    if csv:
        _check_file_count(stored, csv)
        series, _ = load_series(config, csv, step_seconds=step)
        scalers, covariate_scalers = stored_scalers(stored), stored_covariate_scalers(stored)
    else:
        series, files = load_series(config, step_seconds=step)
        for now, before in zip(files, stored["data"]["files"]):
            if now["sha256"] != before["sha256"]:
                raise TextrnnError(
                    f"{now['path']} changed since training (sha256 differs): its test split is not the one the run "
                    "was scored on; give it with --csv to score every window of it with the stored scalers"
                )
        scalers = covariate_scalers = None
    dataset = dataset_of(config, series, stored["data"]["season"], scalers, covariate_scalers)
    if scalers is None and dataset.scalers != stored_scalers(stored):
        raise TextrnnError("the rebuilt scalers differ from the stored ones: the data or the code changed")
    started = time.perf_counter()
    results = score(model, dataset, "test")
    results["elapsed_sec"] = time.perf_counter() - started
    results["checkpoint"] = stored["run_dir"]
    results["weights"] = stored["weights"]
    results["dataset"] = dataset
    return results


def _check_file_count(stored: dict, csv) -> None:
    trained_on = len(stored["data"]["files"])
    if len(csv) != trained_on:
        raise TextrnnError(
            f"the run was trained on {trained_on} file(s); give as many --csv files, in the same order "
            "(each with the same columns)"
        )


def forecast_series(
    model: Forecaster,
    config: ForecastConfig,
    item: Series,
    scaler: Scaler,
    steps: int,
    with_quantiles: bool = False,
    covariate_scalers: dict[str, Scaler] | None = None,
    future=None,
):
    """Forecast ``steps`` points past the end of ``item`` (recursively, ``horizon`` at a time) -> (times, values),
    and with ``with_quantiles`` also the quantiles (steps, Q) (past the first ``horizon`` steps they are those
    of the model fed its own medians, so they leave out the uncertainty of those). ``future`` holds the
    known-ahead covariates of the steps (``timeseries.read_future``)."""
    lookback, horizon = config.lookback, config.horizon
    future_times, rows = prediction_inputs(
        item,
        scaler,
        covariate_scalers or {},
        config.calendar,
        lookback,
        horizon,
        steps,
        observed=config.covariates,
        known=config.future_covariates,
        country=config.country,
        future=future,
    )
    quantiles = []  # (horizon, Q) blocks, scaled
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for position in range(lookback, lookback + steps, horizon):
            window = torch.from_numpy(rows[position - lookback : position])[None].to(device)
            known = torch.from_numpy(rows[position : position + horizon, 1:])[None].to(device)  # future_features
            block = model(window, known, all_quantiles=True)[0].float().cpu().numpy()
            quantiles.append(block)
            rows[position : position + horizon, 0] = block[:, model.point]  # the forecasts become the next inputs
    values = scaler.inverse(rows[lookback : lookback + steps, 0].astype(np.float64))
    if with_quantiles:
        return future_times, values, scaler.inverse(np.concatenate(quantiles)[:steps].astype(np.float64))
    return future_times, values


def predict_run(checkpoint_dir=None, csv=None, steps: int = 24, weights=None, device="cpu", future_csv=()) -> dict:
    """Forecasts past the end of every series of ``csv`` (default: the training files) with a stored model.

    ``future_csv``: the known-ahead covariates of the steps, one file for all series or one per file."""
    model, config, stored = checkpoint.load_forecast_run(checkpoint_dir, weights, resolve_device(device))
    if csv:
        _check_file_count(stored, csv)
    series, files = load_series(config, csv or None, step_seconds=stored["data"]["step_seconds"])
    future_csv = [str(path) for path in future_csv or ()]
    if future_csv and not config.future_covariates:
        raise TextrnnError("--future-csv gives known-ahead covariates, but the model reads none: leave it out")
    if len(future_csv) not in (0, 1, len(files)):
        raise TextrnnError(f"give one --future-csv for all files, or one per file ({len(files)}), in their order")
    futures = [
        read_future(path, config.time_col, config.future_covariates, config.time_format, config.dayfirst)
        for path in future_csv
    ]
    forecasts = []
    for number, (item, scaler, covariate_scalers) in enumerate(
        zip(series, stored_scalers(stored), stored_covariate_scalers(stored))
    ):
        future = futures[min(number // len(config.target), len(futures) - 1)] if futures else None  # file by file
        times, values, quantiles = forecast_series(
            model, config, item, scaler, steps, True, covariate_scalers=covariate_scalers, future=future
        )
        forecasts.append({"series": item.name, "times": times, "values": values, "history": item})
        if config.quantiles:  # (steps, Q) in the data's units, for the q<level> columns and the band
            forecasts[-1].update(quantiles=quantiles, levels=config.quantiles)
    return {
        "forecasts": forecasts,
        "time_col": config.time_col,
        "time_format": files[0]["time_format"],
        "checkpoint": stored["run_dir"],
    }


# ----------------------------------------------------------------------------- plots


def test_panels(dataset: Dataset, arrays: dict, points: int = 336) -> list[dict]:
    """Actual vs predicted (first step ahead) over the last ``points`` test targets of each series (at most 6)."""
    panels = []
    for number, name in enumerate(dataset.names[:6]):
        rows = np.flatnonzero(arrays["ids"] == number)[-points:]
        times = dataset.times[arrays["targets"][rows, 0]]
        lines = [("actual", times, arrays["actual"][rows, 0]), ("forecast", times, arrays["predicted"][rows, 0])]
        panels.append({"name": name, "lines": lines, "bands": _bands(arrays, times, rows, 0)})
    return panels


def _bands(source: dict, times: np.ndarray, rows, step=None) -> list:
    """The outermost central interval of ``source["quantiles"]`` (if any) as a band ``(label, times, lower, upper)``."""
    if "quantiles" not in source or len(source["levels"]) < 2:
        return []
    levels, quantiles = source["levels"], source["quantiles"][rows]
    if step is not None:
        quantiles = quantiles[:, step]
    return [(f"{levels[0]:g}-{levels[-1]:g} interval", times, quantiles[:, 0], quantiles[:, -1])]


def forecast_panels(forecasts: list[dict], history_points: int) -> list[dict]:
    """The end of each series and its forecast (at most 6 series)."""
    panels = []
    for forecast in forecasts[:6]:
        history = forecast["history"]
        lines = [
            ("observed", history.times[-history_points:], history.values[-history_points:]),
            ("forecast", forecast["times"], forecast["values"]),
        ]
        bands = _bands(forecast, forecast["times"], slice(None))
        panels.append({"name": forecast["series"], "lines": lines, "bands": bands})
    return panels
