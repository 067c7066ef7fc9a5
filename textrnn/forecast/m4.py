"""A global model on a panel, validated and scored the M4 way (``textrnn forecast m4``).

``run_m4`` reads the panel, holds out the last ``horizon`` values of every series and trains a validation run on
the rest (its own best weights chosen on the ``horizon`` values before those), scores that run's forecasts of
the held-out values next to Naive2 and the seasonal naive forecast, then trains a final run on everything for as
many steps and forecasts the ``horizon`` values after each series' end (scored too when a test file gives them).
With a time limit, the validation run gets half of what is left after reading the data, less a reserve for the
scoring, and the final run the rest. An ensemble (``PanelConfig.ensemble`` members, seeds ``seed``, ``seed + 1``,
...) trains the members of each stage one after another, each an equal share of the stage's time, and forecasts
their median.
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
    the validation run. Shorter ones are skipped, named in one note (the first ``SHOWN_SKIPPED``; the CLI writes
    them all to results.json)."""
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
            f" and {len(skipped) - SHOWN_SKIPPED:,} more (all in results.json)" if len(skipped) > SHOWN_SKIPPED else ""
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
        test = values_after(read_panel(panel_config.test, target=panel_config.target, **read), panel, config.horizon)
    return panel, test, skipped, notes


def values_after(test: Panel, panel: Panel, horizon: int) -> np.ndarray:
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


def _budgets(config: ForecastConfig, started: float) -> tuple[float, float]:
    """``(the deadline of the validation runs, that of the final runs)`` on the perf_counter clock (inf: no time
    limit): the validation runs get ``VALIDATION_SHARE`` of what is left after reading, less a reserve."""
    if not config.max_seconds:
        return float("inf"), float("inf")
    deadline = started + config.max_seconds - RESERVE_SECONDS - RESERVE_SHARE * config.max_seconds
    now = time.perf_counter()
    return now + max(1.0, (deadline - now) * VALIDATION_SHARE), deadline


def _members(config, panel_config, panel: Panel, stage: str, out_dir: Path, deadline: float, steps, run) -> list:
    """Train the ``panel_config.ensemble`` members of one stage (seeds seed, seed + 1, ...) one after another, each
    with an equal share of the time left before ``deadline`` and, for the final runs, the ``steps`` of its
    validation run. Returns each member's ``(trainer summary, run directory)``; stops at an interrupted one."""
    count = panel_config.ensemble
    members = []
    for number in range(count):
        limits = {} if steps is None else {"max_steps": max(1, steps[number]), "epochs": None, "patience": 0}
        if deadline < float("inf"):
            limits["max_seconds"] = max(1.0, (deadline - time.perf_counter()) / (count - number))
        member = dataclasses.replace(config, seed=config.seed + number, **limits)
        directory = out_dir / (stage if count == 1 else f"{stage}-{number + 1}")
        limit = f", up to {member.max_seconds:.0f} s" if member.max_seconds and "max_seconds" in limits else ""
        what = f"{member.max_steps:,} steps on every value" if steps else f"without the last {config.horizon} values"
        name = f"{stage} run" + (f" {number + 1} of {count} (seed {member.seed})" if count > 1 else "")
        run["report"]("note", {"message": f"{name}: {len(panel):,} series {what}{limit}"})
        summary, _ = train_panel(member, panel_config, panel, directory, run["notes"], run["callback"], run["stop"])
        members.append((summary, directory))
        if summary["interrupted"]:
            break
    return members


def _ensemble_forecast(members: list, panel: Panel, config, panel_config, weights: str) -> np.ndarray:
    """The median over the members of their forecasts past the end of ``panel`` (S, horizon), each member with its
    ``weights`` ("best": the validated best, from best.pt; "last": as trained); at least 0 for the series whose
    values all are."""
    level_window = panel_config.level_window or config.season
    windows = last_windows(panel, config.lookback)
    forecasts = []
    for summary, directory in members:
        model = summary["model"]
        if weights == "best":
            model.load_state_dict(checkpoint.read_tensors(directory / "best.pt")["model"])
        forecasts.append(forecast_panel(model, windows, level_window))
    median = np.median(np.stack(forecasts), axis=0)
    # a series that never went below 0 (counts, loads, prices) is not forecast below it
    never_negative = np.minimum.reduceat(panel.values, panel.offsets[:-1]) >= 0
    return np.where(never_negative[:, None], np.maximum(median, 0.0), median)


def run_m4(
    panel_config: PanelConfig, config: ForecastConfig, out_dir, *, callback=None, should_stop=None, started=None
) -> dict:
    """Validate, train and forecast (see the module). Returns the validation scores (``m4.m4_report``: ``smape``,
    ``mase``, ``owa``, ``baselines``, ``per_step_smape``), ``test`` (the same, with a test file), ``series``,
    ``skipped``, ``ids``, ``forecasts`` (S, horizon), ``elapsed_sec``, ``checkpoint`` (the final run, or the
    directory of the runs of an ensemble) and ``steps`` of the runs; ``interrupted`` when a stop was requested."""
    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    panel, test, skipped, notes = load_panels(panel_config, config)
    validation_deadline, deadline = _budgets(config, started)
    inner, actual = split_last(panel, config.horizon)
    run = {"report": callback or (lambda event, info: None), "notes": notes, "callback": callback, "stop": should_stop}
    members = _members(config, panel_config, inner, "validation", out_dir, validation_deadline, None, run)
    validation = _ensemble_forecast(members, inner, config, panel_config, "best")
    result = {**m4.m4_report(actual, validation, inner.histories(), config.season), "series": len(panel)}
    result.update(skipped=skipped, steps={"validation": [summary["steps"] for summary, _ in members]})
    if members[-1][0]["interrupted"]:
        return {**result, "interrupted": True}
    # each final run takes as many steps as its validation run validated best at
    steps = [
        checkpoint.read_tensors(directory / "best.pt").get("step") or summary["steps"] for summary, directory in members
    ]
    run["notes"] = []
    finals = _members(config, panel_config, panel, "final", out_dir, deadline, steps, run)
    forecasts = _ensemble_forecast(finals, panel, config, panel_config, "last")
    if test is not None:
        result["test"] = m4.m4_report(test, forecasts, panel.histories(), config.season)
    result["steps"]["final"] = [summary["steps"] for summary, _ in finals]
    result.update(
        ids=panel.ids,
        forecasts=forecasts,
        interrupted=finals[-1][0]["interrupted"],
        checkpoint=str(finals[0][1] if len(finals) == 1 else out_dir),
        elapsed_sec=time.perf_counter() - started,
    )
    return result
