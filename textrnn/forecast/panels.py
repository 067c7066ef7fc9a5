"""What the forecast plots draw: test forecasts against the actual values, and forecasts past the end of a
series (``textrnn.plots.plot_panels`` draws them).
"""

from __future__ import annotations

import numpy as np

from textrnn.timeseries.windows import Dataset

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
