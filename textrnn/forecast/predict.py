"""Forecasts past the end of each series with a stored run (``textrnn forecast predict``), recursively
``horizon`` steps at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from textrnn.config import ForecastConfig
from textrnn.errors import TextrnnError
from textrnn.forecast.data import check_file_count, load_series, stored_covariate_scalers, stored_scalers
from textrnn.forecast.model import Forecaster, load_forecast_run
from textrnn.timeseries.clean import Series
from textrnn.timeseries.features import Scaler
from textrnn.timeseries.read import read_future
from textrnn.timeseries.windows import prediction_inputs
from textrnn.train.distributed import resolve_device


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
    known-ahead covariates of the steps (``timeseries.read.read_future``)."""
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
    model, config, stored = load_forecast_run(checkpoint_dir, weights, resolve_device(device))
    if csv:
        check_file_count(stored, csv)
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
