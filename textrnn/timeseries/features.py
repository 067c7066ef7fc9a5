"""Model inputs of a series: calendar features, public holidays, the feature rows windows read (scaled target,
calendar, covariates), and min-max scaling fitted on the training part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from textrnn.errors import TextrnnError
from textrnn.timeseries.clean import DAY

CALENDARS = ("linear", "cyclical", "none")


def calendar_features(times: np.ndarray, kind: str) -> np.ndarray:
    """(N,) datetime64 -> (N, C) float32: hour, day of week, month, day of year.

    ``linear``: each scaled to [0, 1] (C = 4); ``cyclical``: sine and cosine of each (C = 8); ``none``: C = 0.
    """
    if kind not in CALENDARS:
        raise TextrnnError(f"unknown calendar encoding {kind!r}: choose one of {', '.join(CALENDARS)}")
    seconds = times.astype("datetime64[s]").astype(np.int64)
    days = np.floor_divide(seconds, DAY)
    hour = (seconds - days * DAY) / 3600.0  # fractional for sub-hourly steps
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    month = times.astype("datetime64[M]").astype(np.int64) % 12
    day_of_year = days - times.astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    periods = ((hour, 24.0), (weekday, 7.0), (month, 12.0), (day_of_year, 366.0))
    if kind == "none":
        return np.zeros((len(times), 0), dtype=np.float32)
    if kind == "linear":
        columns = [value / (period - 1) for value, period in periods]
    else:
        angles = [2 * np.pi * value / period for value, period in periods]
        columns = [f(angle) for angle in angles for f in (np.sin, np.cos)]
    return np.stack(columns, axis=1).astype(np.float32)


def holiday_flags(times: np.ndarray, country: str) -> np.ndarray:
    """(N,) datetime64 -> (N,) float32: 1 on the public holidays of ``country`` (``holidays`` package), else 0.

    ``country`` is an ISO 3166 code, optionally with a subdivision: ``US``, ``DE``, ``US-OH``.
    """
    try:
        import holidays
    except ImportError:
        raise TextrnnError("--country needs the holidays package: pip install 'textrnn[holidays]'") from None
    code, _, subdivision = country.partition("-")
    days = times.astype("datetime64[D]")
    if len(days) == 0:
        return np.zeros(0, dtype=np.float32)
    first, last = (int(str(day)[:4]) for day in (days.min(), days.max()))
    try:
        calendar = holidays.country_holidays(code, subdiv=subdivision or None, years=range(first, last + 1))
    except NotImplementedError as error:
        raise TextrnnError(
            f"--country {country!r} is not known to the holidays package ({error}): give an ISO 3166 code "
            "such as US, GB, DE, optionally with a subdivision (US-OH)"
        ) from None
    dates = np.array(sorted(calendar.keys()), dtype="datetime64[D]")
    return np.isin(days, dates).astype(np.float32)


def window_features(
    times: np.ndarray, scaled: np.ndarray, calendar: str, known: np.ndarray, observed: np.ndarray
) -> np.ndarray:
    """The feature rows that windows read, (N, F) float32: the scaled target (column 0), the calendar of
    ``times``, the known-ahead covariates ``known`` (N, K) and the observed ones ``observed`` (N, P), in this
    order. Everything but the target and the last P columns is known ahead: a model may read those columns
    at the times it forecasts (``Forecaster``). With no covariates, F = 1 + calendar columns.
    """
    columns = [scaled.reshape(-1, 1), calendar_features(times, calendar), known, observed]
    return np.concatenate(columns, axis=1).astype(np.float32)


@dataclass(frozen=True)
class Scaler:
    """Min-max scaling to [0, 1], fitted on a training part; a constant series maps to 0. ``transform`` and
    ``inverse`` keep the shape of what they are given."""

    minimum: float
    maximum: float

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        """The scaler of ``values`` (N,), N >= 1: their minimum and maximum."""
        if len(values) == 0:
            raise TextrnnError("cannot fit a scaler on an empty training part")
        minimum, maximum = float(np.min(values)), float(np.max(values))
        if not math.isfinite(maximum - minimum):
            raise TextrnnError(f"the values range from {minimum:g} to {maximum:g}: too wide to scale; check the data")
        return cls(minimum, maximum)

    @property
    def span(self) -> float:
        """maximum - minimum; 1 for a constant series, so that it maps to 0."""
        return self.maximum - self.minimum if self.maximum > self.minimum else 1.0

    def transform(self, values):
        """Values in the units of the data -> scaled (the training part in [0, 1])."""
        return (values - self.minimum) / self.span

    def inverse(self, values):
        """Scaled values -> the units of the data."""
        return values * self.span + self.minimum
