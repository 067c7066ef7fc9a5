"""Time series for forecasting: CSV reading and cleaning, calendar features, scaling, lazy windows, metrics.

The data flow is ``read_csv`` -> ``clean`` (one ``Series`` per target column and file) ->
``Dataset`` (every series scaled with a scaler fitted on its training part, laid end to
end in one array, with the window starts of each split) -> batches of windows gathered
by index arithmetic (nothing is materialised per window, so memory is O(series length)).

Times are ``numpy.datetime64[s]`` wall-clock times as written in the file (a UTC offset,
where given, is converted to UTC). Daylight-saving changes in local-time data show up as
a missing hour (spring) and a duplicated hour (autumn): the first is interpolated, the
second averaged, and both are counted in the cleaning report.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from textrnn.errors import TextrnnError

# Cell values read as missing (compared in lower case, after stripping spaces).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "?", "#n/a"})
# strptime formats tried after ISO 8601, in this order; month-first before day-first
# (PJM and most US data), so an ambiguous file is read month-first unless --time-format says otherwise.
TIME_FORMATS = (
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y",
    "%d-%m-%Y %H:%M",
    "%d-%m-%Y",
    "%Y%m%d%H%M",
    "%Y%m%d",
)
CALENDARS = ("linear", "cyclical", "none")
DAY = 86_400


# ----------------------------------------------------------------------------- reading


@dataclass
class Table:
    """The columns of a CSV file that forecasting needs, as read (before cleaning)."""

    path: Path
    sha256: str
    time_column: str
    times: np.ndarray  # datetime64[s], NaT where the cell was empty
    columns: dict[str, np.ndarray]  # target name -> float64 values, NaN where missing
    time_format: str  # "iso" or the strptime format that read every time
    rows: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_csv(path: str | Path, time_column: str, targets: list[str], time_format: str | None = None) -> Table:
    """Read ``time_column`` and the ``targets`` of a CSV file (header row first); any problem is one clear error."""
    path = Path(path)
    if not path.exists():
        raise TextrnnError(f"{path} does not exist: give a CSV file with a header row")
    if not path.is_file():
        raise TextrnnError(f"{path} is not a file: give a CSV file with a header row")
    if not targets:
        raise TextrnnError("no --target column given")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(64 * 1024)
            handle.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|") if sample else csv.excel
            except csv.Error:
                dialect = csv.excel
            reader = csv.reader(handle, dialect)
            header = next(reader, None)
            if header is None:
                raise TextrnnError(f"{path} is empty: give a CSV file with a header row")
            header = [name.strip() for name in header]
            wanted = [time_column, *targets]
            missing = [name for name in wanted if name not in header]
            if missing:
                raise TextrnnError(
                    f"{path} has no column {', '.join(repr(m) for m in missing)}; its columns are "
                    f"{', '.join(header[:20])}{' ...' if len(header) > 20 else ''} (choose with --time-col / --target)"
                )
            positions = [header.index(name) for name in wanted]
            width = max(positions) + 1
            cells: list[list[str]] = [[] for _ in wanted]
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) < width:
                    row = row + [""] * (width - len(row))
                for store, position in zip(cells, positions):
                    store.append(row[position])
    except UnicodeDecodeError as error:
        raise TextrnnError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise TextrnnError(f"{path} is not a readable CSV file ({error})") from None
    if not cells[0]:
        raise TextrnnError(f"{path} has a header but no rows")
    times, used_format = parse_times(cells[0], time_format, f"{path} column {time_column!r}")
    columns = {name: parse_numbers(values, f"{path} column {name!r}") for name, values in zip(targets, cells[1:])}
    return Table(path, file_sha256(path), time_column, times, columns, used_format, len(cells[0]))


def parse_numbers(cells: list[str], where: str) -> np.ndarray:
    """Numbers, with the cells of ``MISSING`` as NaN; any other non-number is refused, naming the row."""
    values = np.empty(len(cells), dtype=np.float64)
    for index, cell in enumerate(cells):
        text = cell.strip()
        if text.lower() in MISSING:
            values[index] = math.nan
            continue
        try:
            value = float(text)
        except ValueError:
            raise TextrnnError(
                f"{where} is not numeric: row {index + 2} holds {text[:40]!r} "
                f"(missing values may be empty or one of {', '.join(sorted(m for m in MISSING if m))})"
            ) from None
        values[index] = value if math.isfinite(value) else math.nan
    return values


def parse_times(cells: list[str], time_format: str | None, where: str) -> tuple[np.ndarray, str]:
    """Timestamps -> datetime64[s] (NaT for empty cells) and the format that read them all."""
    texts = [cell.strip() for cell in cells]
    present = [text for text in texts if text]
    if not present:
        raise TextrnnError(f"{where} is empty: there are no timestamps")
    candidates = [time_format] if time_format else ["iso", *TIME_FORMATS]
    furthest = (0, "", "")  # the failure after the most rows read: (row index, text, format)
    for candidate in candidates:
        parse = _parser(candidate)
        parsed = []
        for text in texts:
            if not text:
                parsed.append(None)
                continue
            try:
                parsed.append(parse(text))
            except ValueError:
                if len(parsed) > furthest[0] or not furthest[2]:
                    furthest = (len(parsed), text, candidate)
                break  # another format may read them all
        else:
            return np.array(parsed, dtype="datetime64[s]"), candidate
    row, text, candidate = furthest
    if time_format:
        raise TextrnnError(
            f"{where}: row {row + 2} holds {text[:40]!r}, which does not match --time-format {time_format!r}"
        )
    if row > 0 and any(parsed_text for parsed_text in texts[:row]):
        raise TextrnnError(
            f"{where}: row {row + 2} holds {text[:40]!r}, which is not a time in the format of the rows before it "
            f"({'ISO 8601' if candidate == 'iso' else candidate}); fix the row or give --time-format"
        )
    raise TextrnnError(
        f"{where} holds {present[0][:40]!r}, which is not a time this reader knows "
        "(ISO 8601, 10/1/2004 1:00, 1.10.2004, ...): give its strptime format with --time-format, e.g. '%d/%m/%Y %H:%M'"
    )


def _parser(time_format: str):
    if time_format == "iso":
        return _from_iso
    return lambda text: datetime.strptime(text, time_format)


def _from_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def format_times(times: np.ndarray, time_format: str) -> list[str]:
    """datetime64[s] -> text in the format the file used (ISO for ``"iso"``)."""
    values = times.astype("datetime64[s]").tolist()
    if time_format == "iso":
        return [value.isoformat(sep=" ") for value in values]
    return [value.strftime(time_format) for value in values]


# ----------------------------------------------------------------------------- cleaning


@dataclass
class Series:
    """One cleaned series on a regular grid, possibly in several contiguous segments.

    ``times`` and ``values`` (N,) hold every segment end to end; ``segments`` are the
    ``[start, end)`` index ranges of the pieces that had no gap longer than ``max_gap`` steps.
    """

    name: str
    times: np.ndarray
    values: np.ndarray
    segments: list[tuple[int, int]]
    step_seconds: int
    report: dict = field(default_factory=dict)


def clean(times: np.ndarray, values: np.ndarray, name: str, max_gap: int, step_seconds: int | None = None) -> Series:
    """Sort, average duplicated times, put the series on a regular grid, interpolate gaps of at most
    ``max_gap`` missing steps (missing times and missing values alike), and split it at longer gaps.

    ``step_seconds`` is the grid step; by default the most common difference between consecutive times.
    """
    if max_gap < 0:
        raise TextrnnError(f"--max-gap must be non-negative, got {max_gap}")
    report = {"rows": int(len(times))}
    keep = ~np.isnat(times)
    report["rows_without_time"] = int((~keep).sum())
    times, values = times[keep].astype("datetime64[s]").astype(np.int64), values[keep]
    if len(times) == 0:
        raise TextrnnError(f"series {name!r} has no rows with a time")
    order = np.argsort(times, kind="stable")
    report["unsorted"] = bool((np.diff(times) < 0).any())
    times, values = times[order], values[order]
    report["missing_values"] = int(np.isnan(values).sum())

    # Duplicated times: average the values given (NaN when none is).
    unique, first, counts = np.unique(times, return_index=True, return_counts=True)
    report["duplicated_times"] = int((counts > 1).sum())
    if report["duplicated_times"]:
        group = np.repeat(np.arange(len(unique)), counts)
        present = ~np.isnan(values)
        sums = np.bincount(group, weights=np.where(present, values, 0.0), minlength=len(unique))
        numbers = np.bincount(group, weights=present.astype(np.float64), minlength=len(unique))
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(numbers > 0, sums / np.maximum(numbers, 1), np.nan)
    else:
        values = values[first]
    times = unique
    if np.isnan(values).all():
        raise TextrnnError(f"series {name!r} has no values: every cell is missing")
    if len(times) < 2:
        raise TextrnnError(f"series {name!r} has a single time: a series needs at least two")

    differences = np.diff(times)
    if step_seconds is None:
        steps, step_counts = np.unique(differences, return_counts=True)
        step_seconds = int(steps[np.argmax(step_counts)])
    else:  # a stored model's step: the file must have it too, not a coarser one filled in by interpolation
        steps, step_counts = np.unique(differences, return_counts=True)
        own = int(steps[np.argmax(step_counts)])
        if own != step_seconds:
            raise TextrnnError(
                f"series {name!r} has a step of {_duration(own)}, but the model was trained on a step of "
                f"{_duration(step_seconds)}: resample the file to {_duration(step_seconds)} first"
            )
    off_grid = np.flatnonzero(differences % step_seconds)
    if len(off_grid):
        at = np.datetime64(int(times[off_grid[0] + 1]), "s")
        raise TextrnnError(
            f"series {name!r} is not on a regular grid: {at} is not a whole number of steps of "
            f"{_duration(step_seconds)} after the time before it; resample the file to one step first"
        )
    report["step"] = _duration(step_seconds)

    # Pieces separated by gaps of more than max_gap missing times; inside a piece, a full grid.
    missing_steps = differences // step_seconds - 1
    breaks = np.flatnonzero(missing_steps > max_gap) + 1
    report["missing_times"] = int(missing_steps.sum())
    grid_times, grid_values = [], []
    for piece_times, piece_values in zip(np.split(times, breaks), np.split(values, breaks)):
        slots = (piece_times - piece_times[0]) // step_seconds
        full = np.full(int(slots[-1]) + 1, np.nan)
        full[slots] = piece_values
        grid_times.append(piece_times[0] + step_seconds * np.arange(len(full), dtype=np.int64))
        grid_values.append(full)

    # Missing values (from missing times or empty cells): interpolate runs of at most max_gap, split at longer ones.
    segments, out_times, out_values = [], [], []
    filled = 0
    for piece_times, piece_values in zip(grid_times, grid_values):
        for start, end in _present_runs(piece_values, max_gap):
            chunk = piece_values[start:end].copy()
            holes = np.isnan(chunk)
            if holes.any():
                index = np.arange(len(chunk))
                chunk[holes] = np.interp(index[holes], index[~holes], chunk[~holes])
                filled += int(holes.sum())
            offset = sum(len(v) for v in out_values)
            segments.append((offset, offset + len(chunk)))
            out_times.append(piece_times[start:end])
            out_values.append(chunk)
    points = int(sum(len(v) for v in out_values))
    span = int((times[-1] - times[0]) // step_seconds) + 1
    report["filled"] = filled
    report["left_out"] = span - points  # steps in gaps longer than max_gap: not invented
    report["segments"] = len(segments)
    report["points"] = points
    return Series(
        name,
        np.concatenate(out_times).astype("datetime64[s]"),
        np.concatenate(out_values),
        segments,
        step_seconds,
        report,
    )


def _present_runs(values: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that begin and end with a value and hold no run of more than ``max_gap`` NaNs."""
    present = np.flatnonzero(~np.isnan(values))
    if len(present) == 0:
        return []
    jumps = np.flatnonzero(np.diff(present) - 1 > max_gap)
    starts = np.concatenate([[present[0]], present[jumps + 1]])
    ends = np.concatenate([present[jumps], [present[-1]]]) + 1
    return list(zip(starts.tolist(), ends.tolist()))


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


# ----------------------------------------------------------------------------- features and scaling


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


@dataclass(frozen=True)
class Scaler:
    """Min-max scaling to [0, 1], fitted on a training part; a constant series maps to 0."""

    minimum: float
    maximum: float

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        if len(values) == 0:
            raise TextrnnError("cannot fit a scaler on an empty training part")
        minimum, maximum = float(np.min(values)), float(np.max(values))
        if not math.isfinite(maximum - minimum):
            raise TextrnnError(f"the values range from {minimum:g} to {maximum:g}: too wide to scale; check the data")
        return cls(minimum, maximum)

    @property
    def span(self) -> float:
        return self.maximum - self.minimum if self.maximum > self.minimum else 1.0

    def transform(self, values):
        return (values - self.minimum) / self.span

    def inverse(self, values):
        return values * self.span + self.minimum


# ----------------------------------------------------------------------------- windows

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Every series scaled and laid end to end, with the window starts of each split.

    A window starting at ``s`` reads ``features[s : s + lookback]`` (column 0 is the scaled
    target, the rest calendar features) and predicts ``values[s + lookback : s + lookback + horizon]``.
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

    def windows(self, split: str) -> int:
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
) -> Dataset:
    """Scale each series (scalers fitted on its training part unless given), add calendar features and index
    the windows. With ``scalers`` given (a stored model on a new file) every window is a test window."""
    features, values, raw, times, series_of, names, fitted, first_test = [], [], [], [], [], [], [], []
    starts = {split: [] for split in SPLITS}
    offset = 0
    for number, item in enumerate(series):
        length = len(item.values)
        if scalers is None:
            train_end, test_start = split_points(length, val_fraction, test_fraction)
            if train_end < lookback + horizon:
                raise TextrnnError(
                    f"series {item.name!r} is too short: of its {length:,} points, {max(train_end, 0):,} are left for "
                    f"training, fewer than --lookback + --horizon = {lookback + horizon}; use a shorter --lookback "
                    "or more data"
                )
            scaler = Scaler.fit(item.values[:train_end])
            bounds = {"train": (0, train_end), "val": (train_end, test_start), "test": (test_start, length)}
        else:
            scaler = scalers[number]
            bounds = {"train": (0, 0), "val": (0, 0), "test": (0, length)}
        with np.errstate(over="ignore"):
            scaled = scaler.transform(item.values).astype(np.float32)
        if not np.isfinite(scaled).all():
            raise TextrnnError(
                f"series {item.name!r} has values beyond 1e38 times the range of its training part "
                f"({scaler.minimum:g} to {scaler.maximum:g}): they cannot be scaled; check the data"
            )
        features.append(np.concatenate([scaled[:, None], calendar_features(item.times, calendar)], axis=1))
        values.append(scaled)
        raw.append(item.values)
        times.append(item.times)
        series_of.append(np.full(length, number, dtype=np.int32))
        names.append(item.name)
        fitted.append(scaler)
        first_test.append(str(item.times[bounds["test"][0]]) if bounds["test"][0] < length else "")
        windows = dict.fromkeys(SPLITS, 0)
        for split, (begin, end) in bounds.items():
            history = lookback if split == "train" else max(lookback, season)  # the seasonal baseline's too
            for seg_start, seg_end in item.segments:
                first = seg_start + history - lookback  # window start
                last = seg_end - lookback - horizon  # inclusive
                candidates = np.arange(first, last + 1, dtype=np.int64)
                target = candidates + lookback
                keep = (target >= begin) & (target + horizon <= end)
                starts[split].append(candidates[keep] + offset)
                windows[split] += int(keep.sum())
        _check_windows(item.name, windows, bounds, lookback, horizon, season, training=scalers is None)
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
    )


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


# ----------------------------------------------------------------------------- metrics and baselines

METRICS = ("smape", "mape", "mae", "rmse")


def metrics(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """MAE, RMSE (units of the data) and MAPE, sMAPE (%) over all points given.

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
    earlier, going back whole seasons until it is observed), each (W, horizon) in the units of ``values``."""
    last = values[starts + lookback - 1]
    persistence = np.repeat(last[:, None], horizon, axis=1)
    ahead = np.arange(horizon)
    back = season * ((ahead // season) + 1)  # whole seasons, enough to reach an observed time
    seasonal = values[starts[:, None] + lookback + ahead - back]
    return {"persistence": persistence, "seasonal_naive": seasonal}
