"""Panels: many series of their own lengths, read from the M4 competition's wide format (one series a row) or from
a long table (one value a row: series id, time, value), kept as one flat array and the offsets of the series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from textrnn.errors import TextrnnError
from textrnn.timeseries.read import parse_numbers, parse_times, read_csv_columns

FORMATS = ("m4", "long")
GRID_GROWTH = 4  # a long table whose gaps would more than quadruple its values has no common step


@dataclass
class Panel:
    """S series one after another: series i is ``values[offsets[i]:offsets[i + 1]]``, named ``ids[i]``."""

    ids: list[str]
    values: np.ndarray  # (N,) float64
    offsets: np.ndarray  # (S + 1,) int64
    filled: int = 0  # values interpolated inside gaps (long format)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def series(self, number: int) -> np.ndarray:
        return self.values[self.offsets[number] : self.offsets[number + 1]]

    def histories(self) -> list[np.ndarray]:
        return [self.series(number) for number in range(len(self))]


def of_series(ids: list[str], series: list[np.ndarray]) -> Panel:
    """A panel of separate arrays."""
    lengths = np.array([len(values) for values in series], dtype=np.int64)
    values = np.concatenate(series) if series else np.zeros(0)
    return Panel(list(ids), np.asarray(values, dtype=np.float64), np.r_[0, np.cumsum(lengths)].astype(np.int64))


def subset(panel: Panel, numbers: np.ndarray) -> Panel:
    """The series ``numbers`` of ``panel``, in that order."""
    return of_series([panel.ids[number] for number in numbers], [panel.series(number) for number in numbers])


def split_last(panel: Panel, horizon: int) -> tuple[Panel, np.ndarray]:
    """``(panel without the last horizon values of each series, those values (S, horizon))``; every series must be
    longer than ``horizon``."""
    short = np.flatnonzero(panel.lengths <= horizon)
    if len(short):
        raise TextrnnError(
            f"{len(short)} series are not longer than the {horizon} values held out ({panel.ids[short[0]]!r} has "
            f"{panel.lengths[short[0]]})"
        )
    ends = panel.offsets[1:]
    held = ends[:, None] - horizon + np.arange(horizon)[None, :]
    keep = np.ones(len(panel.values), dtype=bool)
    keep[held.ravel()] = False
    offsets = panel.offsets - horizon * np.arange(len(panel) + 1)
    return Panel(panel.ids, panel.values[keep], offsets, panel.filled), panel.values[held]


# ----------------------------------------------------------------------------- reading


def read_panel(path, format: str = "m4", id_col=None, time_col=None, target=None) -> Panel:
    """Read a panel: ``format`` "m4" (``read_m4``) or "long" (``read_long``, which needs the three columns)."""
    if format == "m4":
        return read_m4(path)
    if format == "long":
        missing = [
            flag for flag, value in (("--id-col", id_col), ("--time-col", time_col), ("--target", target)) if not value
        ]
        if missing:
            raise TextrnnError(
                f"--format long needs {', '.join(missing)}: the columns of the series id, time and value"
            )
        return read_long(path, id_col, time_col, target)
    raise TextrnnError(f"unknown --format {format!r}: choose one of {', '.join(FORMATS)}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise TextrnnError(f"{path} does not exist: give a CSV file with a header row")
    if not path.is_file():
        raise TextrnnError(f"{path} is not a file")


def read_m4(path) -> Panel:
    """The M4 wide format: a header row, then one series a row, its id in the first column and its values in the
    others, shorter series padded with empty fields at the end (the competition's ``Hourly-train.csv``)."""
    path = Path(path)
    _check_file(path)
    frame = _read_wide(path)
    if frame.shape[1] < 2 or len(frame) == 0:
        raise TextrnnError(f"{path} has no series: the M4 format is a header row, then rows of an id and values")
    ids = frame.iloc[:, 0].astype(str).str.strip().tolist()
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        raise TextrnnError(f"{path}: the id {ids[int(np.argmax(duplicated))]!r} names two series")
    cells = frame.iloc[:, 1:]
    for name in cells.columns:  # pandas parsed the numbers; a column it left as text holds a non-number
        if not pd.api.types.is_numeric_dtype(cells[name]):
            parse_numbers(cells[name].to_numpy(), f"{path}, column {name!r},")  # names the row, or accepts NA words
            cells[name] = pd.to_numeric(cells[name], errors="coerce")
    matrix = np.array(cells.to_numpy(dtype=np.float64, na_value=np.nan))  # a copy: pandas may lend a read-only view
    matrix[~np.isfinite(matrix)] = np.nan
    observed = ~np.isnan(matrix)
    lengths = observed.sum(axis=1)
    inside = np.arange(matrix.shape[1])[None, :] < lengths[:, None]
    broken = np.flatnonzero((observed != inside).any(axis=1))
    if len(broken):
        raise TextrnnError(
            f"{path}: series {ids[broken[0]]!r} has a missing value before its last one (the M4 format pads "
            "only the end of a row)"
        )
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise TextrnnError(f"{path}: series {ids[empty[0]]!r} has no values")
    return Panel(ids, matrix[observed], np.r_[0, np.cumsum(lengths)].astype(np.int64))


def _read_wide(path: Path) -> pd.DataFrame:
    """A wide CSV file, the first column as text and the others parsed as numbers by pandas where they are."""
    try:
        return pd.read_csv(path, dtype={0: str}, encoding="utf-8-sig", index_col=False)
    except UnicodeDecodeError as error:
        raise TextrnnError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except pd.errors.EmptyDataError:
        raise TextrnnError(f"{path} is empty: give a CSV file with a header row") from None
    except (pd.errors.ParserError, ValueError) as error:
        raise TextrnnError(f"{path} is not a readable CSV file ({str(error).strip()[:200]})") from None


def _positions(times: pd.Series, where: str) -> np.ndarray:
    """Times (R,) -> (R,) int64 ticks: whole numbers as written (a step number), or timestamps in seconds."""
    if pd.api.types.is_numeric_dtype(times):
        numbers = times.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.all(np.isfinite(numbers)):
            raise TextrnnError(f"{where}: row {int(np.argmax(~np.isfinite(numbers))) + 2} has no time")
        if not np.all(numbers == np.round(numbers)):
            raise TextrnnError(f"{where} holds numbers that are not whole: give step numbers or timestamps")
        return numbers.astype(np.int64)
    stamps, _ = parse_times(times.where(times.notna(), "").astype(str), None, where)
    if np.isnat(stamps).any():
        raise TextrnnError(f"{where}: row {int(np.argmax(np.isnat(stamps))) + 2} has no time")
    return stamps.astype(np.int64)


def _values(column: pd.Series, where: str) -> np.ndarray:
    """A value column (R,) -> float64, NaN where missing (text left by pandas is parsed cell by cell)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.where(np.isfinite(values), values, np.nan)
    return parse_numbers(column.where(column.notna(), "").astype(str).to_numpy(), where)


def read_long(path, id_col: str, time_col: str, target: str) -> Panel:
    """A long table (CSV): one value a row, with its series id and time, in any order. Each series starts and
    ends where its own values do; the step is the greatest common divisor of the time differences, and the values missing inside a
    series (absent rows, empty cells) are interpolated linearly (``Panel.filled`` counts them)."""
    path = Path(path)
    _check_file(path)
    if len({id_col, time_col, target}) < 3:
        raise TextrnnError("--id-col, --time-col and --target must name three different columns")
    frame = read_csv_columns(path, [id_col, time_col, target], text=[id_col])
    if len(frame) == 0:
        raise TextrnnError(f"{path} has a header but no rows")
    values = _values(frame[target], f"{path}, column {target!r},")
    ticks = _positions(frame[time_col], f"{path}, column {time_col!r}")
    codes, ids = pd.factorize(frame[id_col].str.strip(), sort=False)
    if (codes < 0).any():
        raise TextrnnError(f"{path}, column {id_col!r}: row {int(np.argmax(codes < 0)) + 2} has no series id")
    keep = ~np.isnan(values)
    codes, ticks, values = codes[keep], ticks[keep], values[keep]
    order = np.lexsort((ticks, codes))
    codes, ticks, values = codes[order], ticks[order], values[order]
    same = codes[1:] == codes[:-1]
    steps = np.diff(ticks)[same]
    if (steps == 0).any():
        where = np.flatnonzero(same & (np.diff(ticks) == 0))[0]
        raise TextrnnError(f"{path}: series {ids[codes[where]]!r} has two values at one time")
    step = int(np.gcd.reduce(steps)) if len(steps) else 1
    grid = int(np.sum(steps // step)) + int(codes[-1]) + 1 if len(steps) else len(values)
    if grid > GRID_GROWTH * max(len(values), 1):
        raise TextrnnError(
            f"{path}: the times have no common step (their greatest common step, {step}, would fill in "
            f"{grid - len(values):,} values for {len(values):,} given): resample the series to one step"
        )
    return _gridded([str(name) for name in ids], codes, ticks // step, values)


def _gridded(ids: list[str], codes: np.ndarray, ticks: np.ndarray, values: np.ndarray) -> Panel:
    """Sorted rows (series ``codes``, integer ``ticks``, ``values``) -> a panel on a regular grid per series, gaps
    interpolated. A series' first and last points are observed, so one interpolation over the flat array never
    reaches across two series."""
    count = len(ids)
    first = np.full(count, np.iinfo(np.int64).max)
    last = np.full(count, np.iinfo(np.int64).min)
    np.minimum.at(first, codes, ticks)
    np.maximum.at(last, codes, ticks)
    present = first <= last  # a series whose every cell was empty has no values
    lengths = np.where(present, last - first + 1, 0)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    flat = np.full(offsets[-1], np.nan)
    where = offsets[codes] + ticks - first[codes]
    flat[where] = values
    missing = np.isnan(flat)
    if missing.any():
        known = np.flatnonzero(~missing)
        flat[missing] = np.interp(np.flatnonzero(missing), known, flat[known])
    kept = [name for name, keep in zip(ids, present) if keep]
    return Panel(kept, flat, np.r_[0, np.cumsum(lengths[present])].astype(np.int64), int(missing.sum()))
