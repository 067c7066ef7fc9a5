"""A global model on a panel, validated and scored the M4 way (``textrnn forecast m4``).

``run_m4`` reads the panel, holds out the last ``horizon`` values of every series and trains a validation run on
the rest (its own best weights chosen on the ``horizon`` values before those), scores that run's forecasts of
the held-out values next to Naive2 and the seasonal naive forecast, then trains a final run on everything for as
many steps and forecasts the ``horizon`` values after each series' end (scored too when a test file gives them).
With a time limit, the validation run gets half of what is left after reading the data, less a reserve for the
scoring, and the final run the rest.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from textrnn import checkpoint
from textrnn.config import ForecastConfig, PanelConfig
from textrnn.errors import TextrnnError
from textrnn.forecast.global_model import PanelTask, forecast_panel, last_windows
from textrnn.timeseries import m4
from textrnn.timeseries.panel import Panel, read_panel, split_last, subset
from textrnn.train.distributed import join
from textrnn.train.trainer import fit

RESERVE_SECONDS = 3.0  # kept from the time limit for the scoring and the files after the two runs
RESERVE_SHARE = 0.02
VALIDATION_SHARE = 0.5
SHOWN_SKIPPED = 10  # ids named in the line about series too short


def load_panels(panel_config: PanelConfig, config: ForecastConfig) -> tuple[Panel, np.ndarray | None, list, list]:
    """``(panel of the series long enough, their test values (S, horizon) or None, skipped ids, notes)``.

    A series needs ``lookback + 3 * horizon`` values: one training window before the two held-out horizons of
    the validation run. Shorter ones are skipped, all named in one note."""
    if panel_config.patch > config.lookback:
        raise TextrnnError(f"--patch {panel_config.patch} is longer than --lookback {config.lookback}")
    read = dict(format=panel_config.format, id_col=panel_config.id_col, time_col=panel_config.time_col)
    panel = read_panel(panel_config.train, target=panel_config.target, **read)
    needed = config.lookback + 3 * config.horizon
    keep = np.flatnonzero(panel.lengths >= needed)
    skipped = [panel.ids[number] for number in np.flatnonzero(panel.lengths < needed)]
    notes = []
    if panel.filled:
        notes.append(f"{panel.filled:,} values missing inside the series were interpolated")
    if skipped:
        shown = ", ".join(skipped[:SHOWN_SKIPPED]) + (
            f" and {len(skipped) - SHOWN_SKIPPED:,} more" if len(skipped) > SHOWN_SKIPPED else ""
        )
        notes.append(
            f"skipping {len(skipped):,} of {len(panel):,} series shorter than {needed} values (--lookback + 3 x "
            f"--horizon): {shown}"
        )
    if not len(keep):
        raise TextrnnError(
            f"no series of {panel_config.train} holds {needed} values (--lookback {config.lookback} + 3 x --horizon "
            f"{config.horizon}): lower --lookback"
        )
    panel = subset(panel, keep) if len(skipped) else panel
    test = None
    if panel_config.test:
        test = test_values(read_panel(panel_config.test, target=panel_config.target, **read), panel, config.horizon)
    return panel, test, skipped, notes


def test_values(test: Panel, panel: Panel, horizon: int) -> np.ndarray:
    """(S, horizon): the first ``horizon`` values of each series of ``panel`` in the test panel (matched by id)."""
    where = {name: number for number, name in enumerate(test.ids)}
    missing = [name for name in panel.ids if name not in where]
    if missing:
        raise TextrnnError(f"--test has no series {missing[0]!r} ({len(missing)} of the training series missing)")
    rows = np.array([where[name] for name in panel.ids])
    short = [panel.ids[n] for n, row in enumerate(rows) if test.lengths[row] < horizon]
    if short:
        raise TextrnnError(f"--test holds fewer than {horizon} values (--horizon) of series {short[0]!r}")
    return np.stack([test.series(row)[:horizon] for row in rows])


def train_panel(config, panel_config, panel: Panel, out_dir: Path, notes, callback, should_stop) -> tuple:
    """One run of the global model on every series of ``panel`` but their last ``horizon`` values, on which the
    trainer validates. Returns ``(trainer summary, the model with its last weights)``."""
    fit_part, actual = split_last(panel, config.horizon)
    world, device = join(config.device)
    task = PanelTask(config, panel_config, fit_part, (last_windows(fit_part, config.lookback), actual), device, notes)
    data = {"series": len(panel), "ids": panel.ids, "lengths": panel.lengths.tolist()}
    summary = fit(
        task,
        config,
        out_dir,
        world=world,
        device=device,
        run_config=checkpoint.run_config("panel-forecast", forecast=config, panel=panel_config, data=data),
        callback=callback,
        should_stop=should_stop,
    )
    return summary, task


def _budgets(config: ForecastConfig, started: float) -> tuple[float | None, float]:
    """``(seconds of the validation run or None, the deadline of the whole command on the perf_counter clock)``."""
    if not config.max_seconds:
        return None, float("inf")
    deadline = started + config.max_seconds - RESERVE_SECONDS - RESERVE_SHARE * config.max_seconds
    return max(1.0, (deadline - time.perf_counter()) * VALIDATION_SHARE), deadline


def run_m4(
    panel_config: PanelConfig, config: ForecastConfig, out_dir, *, callback=None, should_stop=None, started=None
) -> dict:
    """Validate, train and forecast (see the module). Returns the validation scores (``m4.m4_report``: ``smape``,
    ``mase``, ``owa``, ``baselines``, ``per_step_smape``), ``test`` (the same, with a test file), ``series``,
    ``skipped``, ``ids``, ``forecasts`` (S, horizon), ``elapsed_sec``, ``checkpoint`` (the final run) and
    ``validation_checkpoint``; ``interrupted`` when a stop was requested."""
    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    panel, test, skipped, notes = load_panels(panel_config, config)
    horizon, season = config.horizon, config.season
    seconds, deadline = _budgets(config, started)
    inner, actual = split_last(panel, horizon)
    first = dataclasses.replace(config, max_seconds=seconds) if seconds else config
    report = callback or (lambda event, info: None)
    limit = f", up to {seconds:.0f} s" if seconds else ""
    report("note", {"message": f"validation run: {len(panel):,} series without their last {horizon} values{limit}"})
    summary, task = train_panel(first, panel_config, inner, out_dir / "validation", notes, callback, should_stop)
    model = summary["model"]
    best = checkpoint.read_tensors(out_dir / "validation" / "best.pt")
    model.load_state_dict(best["model"])
    validation = forecast_panel(model, last_windows(inner, config.lookback), task.level_window)
    result = {
        **m4.m4_report(actual, validation, inner.histories(), season),
        "validation_checkpoint": str(out_dir / "validation"),
    }
    result["validation_steps"] = summary["steps"]
    if summary["interrupted"]:
        return {**result, "interrupted": True, "series": len(panel), "skipped": skipped}
    steps = best.get("step") or summary["steps"]  # as many steps as validated best
    remaining = deadline - time.perf_counter()
    final = dataclasses.replace(
        config,
        max_steps=max(1, steps),
        epochs=None,
        patience=0,
        max_seconds=None if not seconds else max(1.0, remaining),
    )
    limit = f", up to {final.max_seconds:.0f} s" if final.max_seconds else ""
    report("note", {"message": f"final run: {final.max_steps:,} steps on every value{limit}"})
    final_summary, _ = train_panel(final, panel_config, panel, out_dir / "final", [], callback, should_stop)
    forecasts = forecast_panel(final_summary["model"], last_windows(panel, config.lookback), task.level_window)
    if test is not None:
        result["test"] = m4.m4_report(test, forecasts, panel.histories(), season)
    result.update(
        series=len(panel),
        skipped=skipped,
        ids=panel.ids,
        forecasts=forecasts,
        final_steps=final_summary["steps"],
        interrupted=final_summary["interrupted"],
        checkpoint=str(out_dir / "final"),
        elapsed_sec=time.perf_counter() - started,
    )
    return result
