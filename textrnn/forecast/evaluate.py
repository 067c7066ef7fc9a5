"""Scoring a forecaster next to the baselines, per series and pooled; calibrating its prediction intervals;
scoring a stored run (``textrnn forecast eval``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from textrnn.errors import TextrnnError
from textrnn.forecast.data import check_file_count, dataset_of, load_series, stored_covariate_scalers, stored_scalers
from textrnn.forecast.model import Forecaster, load_forecast_run
from textrnn.timeseries.metrics import baseline_forecasts, interval_metrics, interval_pairs, metrics
from textrnn.timeseries.windows import Dataset, window_indices
from textrnn.train.distributed import resolve_device

EVAL_BATCH = 4096  # windows per forward pass when scoring
STEP_ALONE = 24  # the step ahead whose sMAPE is also reported alone, pooled over the series (smape_step24)


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
    key = f"smape_step{STEP_ALONE}"  # the day ahead of hourly data alone, beside the figures pooled over the horizon
    results["overall"][key] = step_smape(actual, predicted, STEP_ALONE)
    for name, forecast in baselines.items():
        results["baselines_overall"][name][key] = step_smape(actual, forecast, STEP_ALONE)
    if model.config.quantiles:  # the quantiles in the data's units, (W, horizon, Q), and their scores
        quantiles = every_quantile * span[..., None] + minimum[..., None]
        results["arrays"].update(quantiles=quantiles, levels=model.config.quantiles)
        results.update(interval_results(model.config.quantiles, actual, quantiles, ids, dataset.names))
    return results


def step_smape(actual: np.ndarray, forecast: np.ndarray, step: int) -> float | None:
    """The sMAPE of the forecasts ``step`` steps ahead alone (column step - 1 of (W, horizon)); None when the
    horizon is shorter or there is no window."""
    if actual.shape[1] < step or not len(actual):
        return None
    return metrics(actual[:, step - 1], forecast[:, step - 1])["smape"]


def interval_results(levels, actual: np.ndarray, quantiles: np.ndarray, ids: np.ndarray, names: list[str]) -> dict:
    """``intervals`` ({series: ``timeseries.metrics.interval_metrics``}) and ``intervals_overall`` of ``quantiles``
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
    model, config, stored = load_forecast_run(checkpoint_dir, weights, resolve_device(device))
    step = stored["data"]["step_seconds"]
    if csv:
        check_file_count(stored, csv)
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
