"""Windows over cleaned series: every series scaled with a scaler fitted on its training part, laid end to end in
one array with the window starts of each split; batches of windows are gathered by index arithmetic
(``window_indices``), so nothing is materialised per window and memory is O(series length). Also the feature
rows a forecast past the end of a series reads (``prediction_inputs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from textrnn.errors import TextrnnError
from textrnn.timeseries.clean import Series
from textrnn.timeseries.features import Scaler, holiday_flags, window_features

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Every series scaled and laid end to end, with the window starts of each split.

    A window starting at ``s`` reads ``features[s : s + lookback]`` (column 0 is the scaled
    target, then calendar features and covariates: see ``window_features``) and predicts
    ``values[s + lookback : s + lookback + horizon]``.
    A window never crosses a segment, and belongs to the split that holds all its targets.
    """

    features: np.ndarray  # (N, F) float32
    values: np.ndarray  # (N,) float32, scaled
    raw: np.ndarray  # (N,) float64, in the units of the data
    times: np.ndarray  # (N,) datetime64[s]
    starts: dict[str, np.ndarray]  # split -> (W,) int64 window starts
    series_of: np.ndarray  # (N,) int32: which series each point belongs to
    names: list[str]
    scalers: list[Scaler]
    lookback: int
    horizon: int
    season: int
    first_test_time: list[str] = field(default_factory=list)
    covariate_scalers: list[dict[str, Scaler]] = field(default_factory=list)  # per series: name -> scaler

    def windows(self, split: str) -> int:
        """The number of windows W of ``split``."""
        return len(self.starts[split])


def split_points(length: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Chronological split of ``length`` points: train ``[0, a)``, validation ``[a, b)``, test ``[b, length)``."""
    test = max(1, round(length * test_fraction))
    val = max(1, round(length * val_fraction)) if val_fraction > 0 else 0
    return length - test - val, length - test


def build_dataset(
    series: list[Series],
    lookback: int,
    horizon: int,
    calendar: str,
    val_fraction: float,
    test_fraction: float,
    season: int,
    scalers: list[Scaler] | None = None,
    *,
    observed: tuple[str, ...] = (),
    known: tuple[str, ...] = (),
    country: str | None = None,
    covariate_scalers: list[dict[str, Scaler]] | None = None,
) -> Dataset:
    """Scale each series (scalers fitted on its training part unless given), add calendar features and index
    the windows. With ``scalers`` given (a stored model on a new file) every window is a test window.
    The series are laid end to end: N points in all, F feature columns (see ``Dataset`` for the shapes).

    ``observed`` and ``known`` name covariates of the series (known up to the forecast time, and known
    ahead), each scaled like the target (``covariate_scalers`` given with ``scalers``); ``country`` adds
    its public holidays as a known-ahead 0/1 feature. See ``window_features`` for the columns.
    """
    features, values, raw, times, series_of, names, fitted, first_test = [], [], [], [], [], [], [], []
    fitted_covariates = []
    starts = {split: [] for split in SPLITS}
    offset = 0
    for number, item in enumerate(series):
        length = len(item.values)
        training = scalers is None
        bounds = _split_bounds(item, lookback, horizon, val_fraction, test_fraction, training)
        scaler = Scaler.fit(item.values[: bounds["train"][1]]) if training else scalers[number]
        scaled = _scaled(scaler, item.values, f"series {item.name!r}")
        own, known_columns, observed_columns = _covariate_columns(
            item, observed, known, country, bounds["train"][1], covariate_scalers, number
        )
        features.append(window_features(item.times, scaled, calendar, known_columns, observed_columns))
        fitted_covariates.append(own)
        values.append(scaled)
        raw.append(item.values)
        times.append(item.times)
        series_of.append(np.full(length, number, dtype=np.int32))
        names.append(item.name)
        fitted.append(scaler)
        first_test.append(str(item.times[bounds["test"][0]]) if bounds["test"][0] < length else "")
        windows = _window_starts(item.segments, bounds, lookback, horizon, season)
        counts = {split: len(each) for split, each in windows.items()}
        _check_windows(item.name, counts, bounds, lookback, horizon, season, training)
        for split, each in windows.items():
            starts[split].append(each + offset)
        offset += length
    return Dataset(
        features=np.concatenate(features),
        values=np.concatenate(values),
        raw=np.concatenate(raw),
        times=np.concatenate(times),
        starts={split: np.concatenate(parts) if parts else np.zeros(0, np.int64) for split, parts in starts.items()},
        series_of=np.concatenate(series_of),
        names=names,
        scalers=fitted,
        lookback=lookback,
        horizon=horizon,
        season=season,
        first_test_time=first_test,
        covariate_scalers=fitted_covariates,
    )


def _split_bounds(
    item: Series, lookback: int, horizon: int, val_fraction: float, test_fraction: float, training: bool
) -> dict[str, tuple[int, int]]:
    """The ``[begin, end)`` point range of each split of ``item`` (split -> (begin, end)): chronological parts
    when ``training``, else the whole series for test. Refuses a series too short to train on."""
    length = len(item.values)
    if not training:
        return {"train": (0, 0), "val": (0, 0), "test": (0, length)}
    train_end, test_start = split_points(length, val_fraction, test_fraction)
    if train_end < lookback + horizon:
        raise TextrnnError(
            f"series {item.name!r} is too short: of its {length:,} points, {max(train_end, 0):,} are left for "
            f"training, fewer than --lookback + --horizon = {lookback + horizon}; use a shorter --lookback "
            "or more data"
        )
    return {"train": (0, train_end), "val": (train_end, test_start), "test": (test_start, length)}


def _covariate_columns(
    item: Series,
    observed: tuple[str, ...],
    known: tuple[str, ...],
    country: str | None,
    train_end: int,
    covariate_scalers: list[dict[str, Scaler]] | None,
    number: int,
) -> tuple[dict[str, Scaler], np.ndarray, np.ndarray]:
    """The covariates of ``item`` (the ``number``-th series) scaled: their scalers (name -> scaler; fitted on
    the first ``train_end`` points unless ``covariate_scalers`` gives them), the known-ahead columns (N, K),
    holidays of ``country`` last, and the observed ones (N, P)."""
    own, columns = {}, {"observed": [], "known": []}
    for kind, wanted in (("observed", observed), ("known", known)):
        for name in wanted:
            if name not in item.covariates:
                raise TextrnnError(f"series {item.name!r} has no covariate {name!r}: read it with the series")
            column = item.covariates[name]
            given = covariate_scalers[number][name] if covariate_scalers is not None else None
            own[name] = given or Scaler.fit(column[:train_end])
            columns[kind].append(_scaled(own[name], column, f"covariate {name!r} of series {item.name!r}"))
    if country:
        columns["known"].append(holiday_flags(item.times, country))
    length = len(item.values)
    return own, _stacked(columns["known"], length), _stacked(columns["observed"], length)


def _window_starts(segments, bounds: dict, lookback: int, horizon: int, season: int) -> dict[str, np.ndarray]:
    """The starts of the windows of each split in one series (split -> (W,) int64, indices into the series):
    windows within one of its ``segments`` whose targets all lie in the split's ``bounds``. Validation and
    test windows also leave room for a season before their targets (the seasonal-naive baseline reads it)."""
    starts = {}
    for split, (begin, end) in bounds.items():
        history = lookback if split == "train" else max(lookback, season)
        parts = [np.zeros(0, np.int64)]
        for seg_start, seg_end in segments:
            first = seg_start + history - lookback  # window start
            last = seg_end - lookback - horizon  # inclusive
            candidates = np.arange(first, last + 1, dtype=np.int64)
            target = candidates + lookback
            parts.append(candidates[(target >= begin) & (target + horizon <= end)])
        starts[split] = np.concatenate(parts)
    return starts


def _stacked(columns: list[np.ndarray], length: int) -> np.ndarray:
    """K columns (N,) -> (N, K); no columns -> (length, 0) float32."""
    return np.stack(columns, axis=1) if columns else np.zeros((length, 0), np.float32)


def _scaled(scaler: Scaler, values: np.ndarray, what: str) -> np.ndarray:
    """(N,) values -> (N,) float32 scaled by ``scaler``; refuses values too far out to scale in float32."""
    with np.errstate(over="ignore"):
        scaled = scaler.transform(values).astype(np.float32)
    if not np.isfinite(scaled).all():
        raise TextrnnError(
            f"{what} has values beyond 1e38 times the range of its training part "
            f"({scaler.minimum:g} to {scaler.maximum:g}): they cannot be scaled; check the data"
        )
    return scaled


def prediction_inputs(
    item: Series,
    scaler: Scaler,
    covariate_scalers: dict[str, Scaler],
    calendar: str,
    lookback: int,
    horizon: int,
    steps: int,
    *,
    observed: tuple[str, ...] = (),
    known: tuple[str, ...] = (),
    country: str | None = None,
    future: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What forecasting ``steps`` past the end of ``item`` reads: the times of the steps (S,) and feature rows
    (``window_features``) for the last ``lookback`` observed times and then whole horizons after them,
    (lookback + ceil(S / horizon) * horizon, F).

    The caller fills the target column (0) of the rows after ``lookback`` with its forecasts as it goes,
    ``horizon`` at a time; a model that reads the known-ahead columns of the times it forecasts finds them
    there. ``future`` = (times, name -> values) gives the known-ahead covariates of the steps
    (``read_future``); past the steps asked, the last step's values are repeated. Observed covariates are
    known only up to the forecast time: with them, ``steps`` is at most ``horizon``.
    """
    if steps < 1:
        raise TextrnnError(f"--steps must be at least 1, got {steps}")
    start, end = item.segments[-1]
    if end - start < lookback:
        raise TextrnnError(
            f"series {item.name!r} ends with {end - start} contiguous points, fewer than the --lookback of "
            f"{lookback} the model reads: there is nothing to forecast from"
        )
    if observed and steps > horizon:
        raise TextrnnError(
            f"the model reads observed covariates ({', '.join(observed)}), known only up to the forecast time: "
            f"it forecasts at most its --horizon of {horizon} steps; ask --steps {horizon} or fewer"
        )
    step = np.timedelta64(item.step_seconds, "s")
    history = slice(end - lookback, end)
    ahead = -(-steps // horizon) * horizon  # whole horizons
    times = np.concatenate([item.times[history], item.times[end - 1] + step * np.arange(1, ahead + 1)])

    def laid_out(history_values: np.ndarray, future_values: np.ndarray | None = None) -> np.ndarray:
        column = np.zeros(len(times), dtype=np.float32)
        column[:lookback] = history_values
        if future_values is not None:
            column[lookback : lookback + steps] = future_values
            column[lookback + steps :] = future_values[-1]
        return column

    scaled = laid_out(_scaled(scaler, item.values[history], f"series {item.name!r}"))
    known_columns = []
    if known:
        given = _future_values(future, known, times[lookback : lookback + steps], item.times[end - 1])
        for name in known:
            history_values = _scaled(covariate_scalers[name], item.covariates[name][history], f"covariate {name!r}")
            future_values = _scaled(covariate_scalers[name], given[name], f"--future-csv column {name!r}")
            known_columns.append(laid_out(history_values, future_values))
    if country:
        known_columns.append(holiday_flags(times, country))
    observed_columns = [
        laid_out(_scaled(covariate_scalers[name], item.covariates[name][history], f"covariate {name!r}"))
        for name in observed
    ]
    rows = window_features(
        times, scaled, calendar, _stacked(known_columns, len(times)), _stacked(observed_columns, len(times))
    )
    return times[lookback : lookback + steps], rows


def _future_values(future, names: tuple[str, ...], times: np.ndarray, last: np.datetime64) -> dict[str, np.ndarray]:
    """The known-ahead covariates at ``times`` (S,): name -> (S,) float64 (duplicated times averaged); refuses,
    naming what is missing."""
    if future is None:
        raise TextrnnError(
            f"the model reads known-ahead covariates ({', '.join(names)}): give their values for the {len(times)} "
            f"steps after {last} with --future-csv FILE (the time column and {', '.join(names)})"
        )
    future_times, columns = future
    values = {}
    for name in names:
        frame = pd.DataFrame({"time": future_times, "value": columns[name]}).dropna()
        column = frame.groupby("time")["value"].mean().reindex(pd.DatetimeIndex(times)).to_numpy(np.float64)
        missing = np.flatnonzero(np.isnan(column))
        if len(missing):
            raise TextrnnError(
                f"--future-csv gives no {name!r} for {times[missing[0]]}"
                f"{f' and {len(missing) - 1} more of the {len(times)} steps asked' if len(missing) > 1 else ''}: "
                "predict needs the known-ahead covariates of every step it forecasts"
            )
        values[name] = column
    return values


def _check_windows(name, windows, bounds, lookback, horizon, season, training: bool) -> None:
    """Every series needs windows in every split it is scored or trained on: name the one that has none."""
    needs = {
        "train": f"--lookback + --horizon = {lookback + horizon} contiguous points",
        "val": f"{max(lookback, season) + horizon} contiguous points (the look-back or a season, then the horizon)",
        "test": f"{max(lookback, season) + horizon} contiguous points (the look-back or a season, then the horizon)",
    }
    fixes = {
        "train": "use a shorter --lookback, a larger --max-gap or more data",
        "val": "use a larger --val-fraction, a shorter --lookback or a larger --max-gap",
        "test": "use a larger --test-fraction, a shorter --lookback or a larger --max-gap",
    }
    for split in SPLITS if training else ("test",):
        if windows[split] == 0:
            begin, end = bounds[split]
            part = f"its {split} part ({end - begin:,} points)" if training else "it"
            raise TextrnnError(
                f"series {name!r} has no {split} window: {part} holds no stretch of {needs[split]}; {fixes[split]}"
            )


def window_indices(starts, lookback: int, horizon: int, xp=np):
    """Window starts (W,) -> input indices (W, lookback) and target indices (W, horizon); ``xp`` is numpy or torch."""
    if xp is np:
        return starts[:, None] + np.arange(lookback), starts[:, None] + lookback + np.arange(horizon)
    steps = xp.arange(lookback + horizon, device=starts.device)
    indices = starts[:, None] + steps
    return indices[:, :lookback], indices[:, lookback:]
