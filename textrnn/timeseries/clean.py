"""Cleaning one series: sorted, duplicated times averaged, the regular step found, short gaps interpolated in
time, long gaps splitting the series; the report of what was done (``describe``), and the season a step
implies (``default_season``).

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

    ``times`` (N,) datetime64 and ``values`` (N,) are the rows as read. ``step_seconds`` is the grid step; by
    default the most common difference between consecutive times. ``covariates`` (name -> (N,) values on the
    same rows) are cleaned alike, column by column; a point is kept where the target and every covariate have
    a value (observed or interpolated).
    """
    if max_gap < 0:
        raise TextrnnError(f"--max-gap must be non-negative, got {max_gap}")
    covariates = covariates or {}
    report = {"rows": int(len(times))}
    frame = _rows_with_time(times, values, covariates)
    report["rows_without_time"] = report["rows"] - len(frame)
    if len(frame) == 0:
        raise TextrnnError(f"series {name!r} has no rows with a time")
    report["unsorted"] = not frame["time"].is_monotonic_increasing
    report["missing_values"] = int(frame[0].isna().sum())
    observed, report["duplicated_times"] = _averaged(frame, name, covariates)

    seconds = observed.index.to_numpy().astype("datetime64[s]").astype(np.int64)  # (M,) the distinct times
    step_seconds = _grid_step(seconds, name, step_seconds)
    report["step"] = _duration(step_seconds)
    missing_steps = np.diff(seconds) // step_seconds - 1  # (M - 1,) missing times after each time
    report["missing_times"] = int(missing_steps.sum())

    grid_seconds, piece_of, piece_offset, lengths = _grid(seconds, missing_steps, max_gap, step_seconds)
    grid = observed.reindex(pd.DatetimeIndex(grid_seconds.astype("datetime64[s]")))
    result, fill = _interpolated(grid, piece_of, piece_offset, lengths, max_gap)
    kept, segments = _segments(result, piece_of)

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


def _rows_with_time(times: np.ndarray, values: np.ndarray, covariates: dict[str, np.ndarray]) -> pd.DataFrame:
    """The rows (N,) that have a time, as a frame: column ``"time"`` (datetime64[s]), the target as column 0
    and the covariates as columns 1.. by position (their names may be anything, "time" included)."""
    frame = pd.DataFrame(
        {
            "time": np.asarray(times).astype("datetime64[s]"),
            0: np.asarray(values, np.float64),
            **{number: np.asarray(column, np.float64) for number, column in enumerate(covariates.values(), 1)},
        }
    )
    return frame[frame["time"].notna()]


def _averaged(frame: pd.DataFrame, name: str, covariates: dict[str, np.ndarray]) -> tuple[pd.DataFrame, int]:
    """One row per distinct time, sorted (M rows, indexed by time), and how many times were duplicated.

    Duplicated times (the autumn hour of local-time data) get the mean of the values given, NaN when none
    is. Refuses a column with no value at all and a series with a single time.
    """
    groups = frame.groupby("time", sort=True)
    duplicated = int((groups.size() > 1).sum())
    observed = groups.mean()
    if observed[0].isna().all():
        raise TextrnnError(f"series {name!r} has no values: every cell is missing")
    for number, covariate in enumerate(covariates, 1):
        if observed[number].isna().all():
            raise TextrnnError(f"covariate {covariate!r} of series {name!r} has no values: every cell is missing")
    if len(observed) < 2:
        raise TextrnnError(f"series {name!r} has a single time: a series needs at least two")
    return observed, duplicated


def _grid_step(seconds: np.ndarray, name: str, step_seconds: int | None) -> int:
    """The step of the grid, in seconds, for the sorted distinct times ``seconds`` (M,): ``step_seconds`` when
    given (a stored model's; the series must have it too), else the most common difference between
    consecutive times. Refuses a time that is not a whole number of steps after the one before it."""
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
    return step_seconds


def _grid(seconds: np.ndarray, missing_steps: np.ndarray, max_gap: int, step_seconds: int):
    """The grid of the times ``seconds`` (M,): every step of each piece between gaps of more than ``max_gap``
    missing times (``missing_steps`` (M - 1,) after each time). Those gaps are never filled, so they are not
    laid out either (memory stays O(rows) whatever the gaps).

    Returns the grid's times in seconds (G,), the piece of each grid point (G,), and the offset in the grid
    and the length of each piece (P,).
    """
    piece_first = np.concatenate([[0], np.flatnonzero(missing_steps > max_gap) + 1])
    piece_last = np.concatenate([piece_first[1:], [len(seconds)]]) - 1
    lengths = (seconds[piece_last] - seconds[piece_first]) // step_seconds + 1
    piece_of = np.repeat(np.arange(len(lengths)), lengths)  # (G,) the piece of each grid point
    piece_offset = np.cumsum(lengths) - lengths
    grid_seconds = (
        seconds[piece_first][piece_of] + (np.arange(int(lengths.sum())) - piece_offset[piece_of]) * step_seconds
    )
    return grid_seconds, piece_of, piece_offset, lengths


def _interpolated(grid: pd.DataFrame, piece_of, piece_offset, lengths, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """The values on the grid (G, 1 + covariates), missing ones (missing times and empty cells alike)
    interpolated in time, and where they were (G, 1 + covariates) bool.

    In each column, a run of at most ``max_gap`` missing values between two observed values of the same
    piece is interpolated; longer runs and runs at a piece's ends stay NaN.
    """
    result = grid.to_numpy(dtype=np.float64, copy=True)  # (G, 1 + covariates)
    fill = np.stack(
        [_fillable(result[:, column], piece_of, piece_offset, lengths, max_gap) for column in range(result.shape[1])],
        axis=1,
    )
    if fill.any():
        interpolated = grid.interpolate(method="time", limit=max_gap, limit_area="inside").to_numpy(dtype=np.float64)
        result[fill] = interpolated[fill]
    return result, fill


def _segments(result: np.ndarray, piece_of: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The grid points kept (K,), those where every column of ``result`` (G, C) has a value, and the
    ``[start, end)`` ranges, in kept points, of their contiguous runs within one piece (``piece_of`` (G,))."""
    kept = np.flatnonzero(~np.isnan(result).any(axis=1))
    new_segment = np.ones(len(kept), dtype=bool)
    new_segment[1:] = (np.diff(kept) > 1) | (np.diff(piece_of[kept]) != 0)
    starts = np.flatnonzero(new_segment)
    return kept, list(zip(starts.tolist(), [*starts[1:].tolist(), len(kept)]))


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
    """A step in words, in the largest unit that divides it: "1 hour", "15 minutes", "7 days"."""
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
