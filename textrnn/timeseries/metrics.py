"""Forecast scores in numpy: sMAPE, MAPE, MAE, RMSE, the persistence and seasonal-naive baselines, and the scores
of prediction intervals (coverage, pinball loss, interval score).
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- metrics and baselines

METRICS = ("smape", "mape", "mae", "rmse")


def metrics(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """MAE, RMSE (units of the data) and MAPE, sMAPE (%) over all points given: ``actual`` and ``predicted``
    of the same size, any shape ((W, horizon) for windows), and ``points``, their number.

    sMAPE is the standard mean of ``2|y - ŷ| / (|y| + |ŷ|)`` (a point where both are 0 counts as 0);
    MAPE leaves out points where ``y`` is 0 (it is undefined there) and is None when all are.
    """
    actual = np.asarray(actual, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    error = np.abs(actual - predicted)
    denominator = np.abs(actual) + np.abs(predicted)
    with np.errstate(divide="ignore", invalid="ignore"):
        symmetric = np.where(denominator > 0, 2 * error / denominator, 0.0)
        nonzero = actual != 0
        mape = float(np.mean(error[nonzero] / np.abs(actual[nonzero])) * 100) if nonzero.any() else None
    return {
        "smape": float(np.mean(symmetric) * 100),
        "mape": mape,
        "mae": float(np.mean(error)),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "points": int(actual.size),
    }


def baseline_forecasts(values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int, season: int) -> dict:
    """Persistence (every step ahead = the last observed value) and seasonal naive (the value one season
    earlier, going back whole seasons until it is observed) of the windows at ``starts`` (W,) over ``values``
    (N,), each (W, horizon) in the units of ``values``."""
    last = values[starts + lookback - 1]
    persistence = np.repeat(last[:, None], horizon, axis=1)
    ahead = np.arange(horizon)
    back = season * ((ahead // season) + 1)  # whole seasons, enough to reach an observed time
    seasonal = values[starts[:, None] + lookback + ahead - back]
    return {"persistence": persistence, "seasonal_naive": seasonal}


# ----------------------------------------------------------------------------- prediction intervals


def interval_pairs(levels) -> list[tuple[int, int]]:
    """Central intervals of quantile ``levels`` (increasing): the outermost pair, then inwards, as index pairs."""
    return [(low, len(levels) - 1 - low) for low in range(len(levels) // 2)]


def interval_key(lower: float, upper: float) -> str:
    """The JSON key of the interval between two quantile levels: 0.1, 0.9 -> "0.1-0.9"."""
    return f"{lower:g}-{upper:g}"


def pinball(actual: np.ndarray, quantiles: np.ndarray, levels) -> float:
    """Mean pinball (quantile) loss over every point and level, in the data's units.

    ``actual`` (N,), ``quantiles`` (N, Q): for level τ and error e = y - q, the loss is τ e when e >= 0
    and (τ - 1) e otherwise; at τ = 0.5 it is half the absolute error.
    """
    actual = np.asarray(actual, dtype=np.float64).reshape(-1, 1)
    quantiles = np.asarray(quantiles, dtype=np.float64).reshape(len(actual), -1)
    error = actual - quantiles
    tau = np.asarray(levels, dtype=np.float64)[None, :]
    return float(np.mean(np.maximum(tau * error, (tau - 1) * error)))


def interval_score(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, below: float, above: float) -> float:
    """Mean interval score of Gneiting and Raftery (2007) for the interval between the quantiles at levels
    ``below`` and ``above`` (for a central (1 - α) interval, below = α/2 and above = 1 - α/2):
    the width, plus (lower - y) / below where y falls under it and (y - upper) / (1 - above) where over it."""
    actual, lower, upper = (np.asarray(item, dtype=np.float64).ravel() for item in (actual, lower, upper))
    under = np.maximum(lower - actual, 0.0) / below
    over = np.maximum(actual - upper, 0.0) / (1.0 - above)
    return float(np.mean(upper - lower + under + over))


def interval_metrics(actual: np.ndarray, quantiles: np.ndarray, levels) -> dict:
    """Scores of quantile forecasts: ``actual`` (N,) or (W, H), ``quantiles`` (..., Q) at increasing ``levels``.

    Returns ``coverage`` (the fraction of points inside each central interval, keyed like "0.1-0.9"),
    ``width`` (its mean width) and ``interval_score`` (``interval_score``) for each, the ``pinball`` loss
    (mean over the levels) and ``points``.
    """
    actual = np.asarray(actual, dtype=np.float64).ravel()
    quantiles = np.asarray(quantiles, dtype=np.float64).reshape(len(actual), len(levels))
    coverage, width, score = {}, {}, {}
    for low, high in interval_pairs(levels):
        key = interval_key(levels[low], levels[high])
        lower, upper = quantiles[:, low], quantiles[:, high]
        coverage[key] = float(np.mean((actual >= lower) & (actual <= upper))) if len(actual) else None
        width[key] = float(np.mean(upper - lower)) if len(actual) else None
        score[key] = interval_score(actual, lower, upper, levels[low], levels[high]) if len(actual) else None
    return {
        "coverage": coverage,
        "width": width,
        "interval_score": score,
        "pinball": pinball(actual, quantiles, levels) if len(actual) else None,
        "points": int(actual.size),
    }
