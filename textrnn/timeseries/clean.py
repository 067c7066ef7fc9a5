"""Cleaning one series: sorted, duplicated times averaged, the regular step found, short gaps interpolated in
time, long gaps splitting the series; the report of what was done.

Times are ``numpy.datetime64[s]`` wall-clock times as written in the file (a UTC offset or time zone, where
given, is converted to UTC). Daylight-saving changes in local-time data show up as a missing hour (spring) and
a duplicated hour (autumn): the first is interpolated, the second averaged, and both are counted in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from textrnn.errors import TextrnnError

DAY = 86_400


# ----------------------------------------------------------------------------- cleaning


@dataclass
class Series:
    """One cleaned series on a regular grid, possibly in several contiguous segments.

    ``times`` and ``values`` (N,) hold every segment end to end; ``segments`` are the
    ``[start, end)`` index ranges of the pieces that had no gap longer than ``max_gap`` steps.
    ``covariates`` (name -> (N,)) are other columns of the file on the same times.
    """

    name: str
    times: np.ndarray
    values: np.ndarray
    segments: list[tuple[int, int]]
    step_seconds: int
    report: dict = field(default_factory=dict)
    covariates: dict[str, np.ndarray] = field(default_factory=dict)


def clean(
    times: np.ndarray,
    values: np.ndarray,
    name: str,
    max_gap: int,
    step_seconds: int | None = None,
    covariates: dict[str, np.ndarray] | None = None,
) -> Series:
    """Sort, average duplicated times, put the series on a regular grid, interpolate gaps of at most
    ``max_gap`` missing steps (missing times and missing values alike), and split it at longer gaps.

    ``step_seconds`` is the grid step; by default the most common difference between consecutive times.
    ``covariates`` (name -> (N,) values on the same rows) are cleaned alike, column by column; a point is
    kept where the target and every covariate have a value (observed or interpolated).
    """
    if max_gap < 0:
        raise TextrnnError(f"--max-gap must be non-negative, got {max_gap}")
    covariates = covariates or {}
    report = {"rows": int(len(times))}
    # Columns by position: 0 is the target, 1.. the covariates (whose names may be anything, "time" included).
    frame = pd.DataFrame(
        {
            "time": np.asarray(times).astype("datetime64[s]"),
            0: np.asarray(values, np.float64),
            **{number: np.asarray(column, np.float64) for number, column in enumerate(covariates.values(), 1)},
        }
    )
    has_time = frame["time"].notna()
    report["rows_without_time"] = int((~has_time).sum())
    frame = frame[has_time]
    if len(frame) == 0:
        raise TextrnnError(f"series {name!r} has no rows with a time")
    report["unsorted"] = not frame["time"].is_monotonic_increasing
    report["missing_values"] = int(frame[0].isna().sum())

    # Duplicated times (the autumn hour of local-time data): the mean of the values given, NaN when none is.
    groups = frame.groupby("time", sort=True)
    report["duplicated_times"] = int((groups.size() > 1).sum())
    observed = groups.mean()
    if observed[0].isna().all():
        raise TextrnnError(f"series {name!r} has no values: every cell is missing")
    for number, covariate in enumerate(covariates, 1):
        if observed[number].isna().all():
            raise TextrnnError(f"covariate {covariate!r} of series {name!r} has no values: every cell is missing")
    if len(observed) < 2:
        raise TextrnnError(f"series {name!r} has a single time: a series needs at least two")

    seconds = observed.index.to_numpy().astype("datetime64[s]").astype(np.int64)
    differences = np.diff(seconds)
    own = int(pd.Series(differences).mode().iloc[0])  # the most common step (the smallest of a tie)
    if step_seconds is None:
        step_seconds = own
    elif own != step_seconds:  # a stored model's step: the file must have it too, not a coarser one filled in
        raise TextrnnError(
            f"series {name!r} has a step of {_duration(own)}, but the model was trained on a step of "
            f"{_duration(step_seconds)}: resample the file to {_duration(step_seconds)} first"
        )
    off_grid = np.flatnonzero(differences % step_seconds)
    if len(off_grid):
        at = np.datetime64(int(seconds[off_grid[0] + 1]), "s")
        raise TextrnnError(
            f"series {name!r} is not on a regular grid: {at} is not a whole number of steps of "
            f"{_duration(step_seconds)} after the time before it; resample the file to one step first"
        )
    report["step"] = _duration(step_seconds)
    missing_steps = differences // step_seconds - 1
    report["missing_times"] = int(missing_steps.sum())

    # The grid: every step of each piece between gaps of more than max_gap missing times. Those gaps are
    # never filled, so they are not laid out either (memory stays O(rows) whatever the gaps).
    piece_first = np.concatenate([[0], np.flatnonzero(missing_steps > max_gap) + 1])
    piece_last = np.concatenate([piece_first[1:], [len(seconds)]]) - 1
    lengths = (seconds[piece_last] - seconds[piece_first]) // step_seconds + 1
    piece_of = np.repeat(np.arange(len(lengths)), lengths)  # (G,) the piece of each grid point
    piece_offset = np.cumsum(lengths) - lengths
    grid_seconds = (
        seconds[piece_first][piece_of] + (np.arange(int(lengths.sum())) - piece_offset[piece_of]) * step_seconds
    )
    grid = observed.reindex(pd.DatetimeIndex(grid_seconds.astype("datetime64[s]")))

    # Missing values (missing times and empty cells alike): in each column, a run of at most max_gap between
    # two observed values of the same piece is interpolated in time; longer runs and runs at a piece's ends
    # stay out.
    result = grid.to_numpy(dtype=np.float64, copy=True)  # (G, 1 + covariates)
    fill = np.stack(
        [_fillable(result[:, column], piece_of, piece_offset, lengths, max_gap) for column in range(result.shape[1])],
        axis=1,
    )
    if fill.any():
        interpolated = grid.interpolate(method="time", limit=max_gap, limit_area="inside").to_numpy(dtype=np.float64)
        result[fill] = interpolated[fill]

    kept = np.flatnonzero(~np.isnan(result).any(axis=1))
    new_segment = np.ones(len(kept), dtype=bool)
    new_segment[1:] = (np.diff(kept) > 1) | (np.diff(piece_of[kept]) != 0)
    starts = np.flatnonzero(new_segment)
    segments = list(zip(starts.tolist(), [*starts[1:].tolist(), len(kept)]))
    span = int((seconds[-1] - seconds[0]) // step_seconds) + 1
    report["filled"] = int(fill[kept, 0].sum())
    if covariates:
        report["covariates_filled"] = int(fill[kept, 1:].sum())
    report["left_out"] = span - len(kept)  # steps in gaps longer than max_gap: not invented
    report["segments"] = len(segments)
    report["points"] = int(len(kept))
    return Series(
        name,
        grid_seconds[kept].astype("datetime64[s]"),
        result[kept, 0],
        segments,
        step_seconds,
        report,
        {covariate: result[kept, number] for number, covariate in enumerate(covariates, 1)},
    )


def _fillable(values: np.ndarray, piece_of, piece_offset, lengths, max_gap: int) -> np.ndarray:
    """(G,) True at the missing values that interpolation fills: runs of at most ``max_gap`` NaNs with an
    observed value on both sides in the same piece of the grid."""
    holes = np.isnan(values)
    edges = np.diff(np.concatenate([[0], holes.astype(np.int8), [0]]))
    run_start, run_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [start, end) of each run
    inside = (run_start > piece_offset[piece_of[run_start]]) & (
        run_end < (piece_offset + lengths)[piece_of[run_end - 1]]
    )
    fillable = inside & (run_end - run_start <= max_gap) & (piece_of[run_start] == piece_of[run_end - 1])
    marks = np.zeros(len(holes) + 1, dtype=np.int64)
    marks[run_start[fillable]] += 1
    marks[run_end[fillable]] -= 1
    return np.cumsum(marks[:-1]) > 0


def _duration(seconds: int) -> str:
    for unit, size in (("day", DAY), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def describe(report: dict) -> str:
    """One line saying what cleaning did."""
    parts = [f"{report['rows']:,} rows", f"step {report['step']}"]
    if report["rows_without_time"]:
        parts.append(f"{report['rows_without_time']:,} rows without a time dropped")
    if report["unsorted"]:
        parts.append("rows sorted by time")
    if report["duplicated_times"]:
        parts.append(f"{report['duplicated_times']:,} duplicated times averaged")
    if report["missing_times"]:
        parts.append(f"{report['missing_times']:,} missing times")
    if report["missing_values"]:
        parts.append(f"{report['missing_values']:,} missing values")
    if report["filled"]:
        parts.append(f"{report['filled']:,} points interpolated")
    if report.get("covariates_filled"):
        parts.append(f"{report['covariates_filled']:,} covariate values interpolated")
    if report["left_out"]:
        parts.append(f"{report['left_out']:,} points in longer gaps left out")
    parts.append(f"{report['segments']} segment{'s' if report['segments'] != 1 else ''}, {report['points']:,} points")
    return ", ".join(parts)


def default_season(step_seconds: int) -> int:
    """Steps in one season for the seasonal-naive baseline: a day for sub-daily data, a week for daily data."""
    if step_seconds < DAY and DAY % step_seconds == 0:
        return DAY // step_seconds
    if step_seconds == DAY:
        return 7
    return 1
