"""The M4 competition's scores and benchmarks in numpy: sMAPE, MASE and OWA over many series, and the Naive2 and
seasonal-naive forecasts (Makridakis, Spiliotis and Assimakopoulos, 2018/2020; the benchmark code of the M4 repository).

Every function takes one series (a 1-D array) or a list of them; a panel's scores are means over its series,
as the competition computed them, and OWA is computed from those means.
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- the seasonality test and indices

TEST_CRITICAL = 1.645  # the one-sided 90% test of the M4 benchmarks


def autocorrelation(values: np.ndarray, lag: int) -> float:
    """The sample autocorrelation at ``lag``: sum (x_t - mean)(x_{t-lag} - mean) / sum (x_t - mean)^2 (0 for a
    constant series)."""
    values = np.asarray(values, dtype=np.float64)
    centered = values - values.mean()
    denominator = float(np.dot(centered, centered))
    if denominator == 0.0 or lag >= len(values):
        return 0.0
    return float(np.dot(centered[lag:], centered[:-lag]) / denominator)


def is_seasonal(values: np.ndarray, season: int) -> bool:
    """The M4 benchmarks' 90% autocorrelation test at lag ``season`` m: seasonal when
    |acf_m| > 1.645 sqrt((1 + 2 sum_{k=1}^{m-1} acf_k^2) / n). Series shorter than 3m, and m = 1, are not
    tested (not seasonal).

    This is the R benchmark code's formula (``SeasonalityTest``); the Python port adds acf_1 unsquared, a slip.
    """
    values = np.asarray(values, dtype=np.float64)
    if season <= 1 or len(values) < 3 * season:
        return False
    lower = np.array([autocorrelation(values, lag) for lag in range(1, season)])
    limit = TEST_CRITICAL * np.sqrt((1.0 + 2.0 * np.sum(lower**2)) / len(values))
    return abs(autocorrelation(values, season)) > limit


def centered_moving_average(values: np.ndarray, season: int) -> np.ndarray:
    """The trend of classical decomposition (R's ``decompose``): a centered moving average over one season,
    2 x m for an even m (weights 1/2m at both ends); NaN where the window does not fit."""
    values = np.asarray(values, dtype=np.float64)
    if season % 2:
        weights = np.full(season, 1.0 / season)
    else:
        weights = np.r_[0.5, np.ones(season - 1), 0.5] / season
    half = len(weights) // 2
    trend = np.full(len(values), np.nan)
    if len(values) >= len(weights):
        trend[half : len(values) - half] = np.convolve(values, weights, mode="valid")
    return trend


def seasonal_indices(values: np.ndarray, season: int) -> np.ndarray:
    """(m,) multiplicative seasonal indices of classical decomposition, position 0 being the series' first value:
    the mean of x / trend at each position of the season, normalized to mean 1. All ones when the series fails
    ``is_seasonal``."""
    values = np.asarray(values, dtype=np.float64)
    if not is_seasonal(values, season):
        return np.ones(max(season, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = values / centered_moving_average(values, season)
    padded = np.r_[ratio, np.full(-len(ratio) % season, np.nan)].reshape(-1, season)
    indices = np.nanmean(padded, axis=0)
    return indices / indices.mean()


# ----------------------------------------------------------------------------- benchmark forecasts


def naive2(values: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(horizon,) Naive2: the last value of the seasonally adjusted series, carried forward and reseasonalized
    (the seasonal indices of ``seasonal_indices``, continued past the end)."""
    values = np.asarray(values, dtype=np.float64)
    indices = seasonal_indices(values, season)
    length = len(values)
    last = values[-1] / indices[(length - 1) % len(indices)]
    return last * indices[(length + np.arange(horizon)) % len(indices)]


def seasonal_naive(values: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(horizon,) the last season repeated: step k (1-based) is the value m * ceil(k / m) steps before it."""
    values = np.asarray(values, dtype=np.float64)
    steps = np.arange(1, horizon + 1)
    return values[len(values) + steps - season * np.ceil(steps / season).astype(int) - 1]


def benchmarks(histories: list[np.ndarray], horizon: int, season: int) -> dict[str, np.ndarray]:
    """``{"naive2", "seasonal_naive"}``: each (S, horizon), the benchmark forecasts of every series."""
    return {
        "naive2": np.stack([naive2(values, horizon, season) for values in histories]),
        "seasonal_naive": np.stack([seasonal_naive(values, horizon, season) for values in histories]),
    }


# ----------------------------------------------------------------------------- scores


def smape_steps(actual: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """(S, h) 200 |y - f| / (|y| + |f|) per point (0 where both are 0), in %."""
    actual = np.asarray(actual, dtype=np.float64)
    forecast = np.asarray(forecast, dtype=np.float64)
    denominator = np.abs(actual) + np.abs(forecast)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 200.0 * np.abs(actual - forecast) / denominator, 0.0)


def mase_scales(histories: list[np.ndarray], season: int) -> np.ndarray:
    """(S,) the in-sample mean absolute seasonal difference of each series, mean |x_t - x_{t-m}| (lag 1 where
    the series is not longer than m), the denominator of MASE."""
    scales = []
    for values in histories:
        values = np.asarray(values, dtype=np.float64)
        lag = season if len(values) > season else 1
        scales.append(float(np.mean(np.abs(values[lag:] - values[:-lag]))) if len(values) > lag else np.nan)
    return np.array(scales)


def scores(actual: np.ndarray, forecast: np.ndarray, scales: np.ndarray) -> dict:
    """``smape`` (%) and ``mase`` of forecasts (S, h) of S series against ``actual`` (S, h): each the mean over the
    series of that series' mean over the horizon; MASE divides each series' MAE by its ``scales`` (S,)."""
    actual = np.asarray(actual, dtype=np.float64)
    forecast = np.asarray(forecast, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mase = np.mean(np.abs(actual - forecast), axis=1) / scales
    return {"smape": float(np.mean(smape_steps(actual, forecast))), "mase": float(np.mean(mase))}


def owa(model: dict, reference: dict) -> float:
    """The overall weighted average: the mean of sMAPE / sMAPE of Naive2 and MASE / MASE of Naive2 (from the means
    over all series, as the M4 competition ranked)."""
    return 0.5 * (model["smape"] / reference["smape"] + model["mase"] / reference["mase"])


def m4_report(actual: np.ndarray, forecast: np.ndarray, histories: list[np.ndarray], season: int) -> dict:
    """The M4 scores of ``forecast`` (S, h) against ``actual`` (S, h), the series' in-sample values being
    ``histories``: ``smape``, ``mase``, ``owa``, ``per_step_smape`` (h,), and ``baselines`` with the same three
    scores of Naive2 and the seasonal naive forecast."""
    horizon = np.asarray(actual).shape[1]
    scales = mase_scales(histories, season)
    reference = benchmarks(histories, horizon, season)
    naive = scores(actual, reference["naive2"], scales)
    baselines = {}
    for name, values in reference.items():
        figures = scores(actual, values, scales)
        baselines[name] = {**figures, "owa": owa(figures, naive)}
    model = scores(actual, forecast, scales)
    return {
        **model,
        "owa": owa(model, naive),
        "baselines": baselines,
        "per_step_smape": [float(value) for value in np.mean(smape_steps(actual, forecast), axis=0)],
    }
