"""Time series for forecasting: reading (CSV or Parquet, through pandas) and cleaning, calendar features,
scaling, lazy windows, metrics.

The data flow is ``read_table`` -> ``clean`` (one ``Series`` per target column and file) ->
``Dataset`` (every series scaled with a scaler fitted on its training part, laid end to
end in one array, with the window starts of each split) -> batches of windows gathered
by index arithmetic (nothing is materialised per window, so memory is O(series length)).

Times are ``numpy.datetime64[s]`` wall-clock times as written in the file (a UTC offset or
time zone, where given, is converted to UTC). Daylight-saving changes in local-time data
show up as a missing hour (spring) and a duplicated hour (autumn): the first is
interpolated, the second averaged, and both are counted in the cleaning report.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from textrnn.errors import TextrnnError

# Cell values read as missing (compared in lower case, after stripping spaces).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "?", "#n/a"})
# A file is Parquet when its name ends so, or when it starts with Parquet's magic bytes.
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
PARQUET_MAGIC = b"PAR1"
# A format pandas guesses that is ISO 8601 is read as ISO 8601 as a whole, so a file may mix "T" and " ",
# with or without seconds and offsets, as fromisoformat allows.
_ISO_FORMAT = re.compile(r"%Y-%m-%d([T ]%H(:%M(:%S(\.%f)?)?)?)?(%z)?")
_MERIDIAN = re.compile(r"(\s*)([AaPp][Mm])$")  # 1:00 PM: pandas guesses the rest, %I ... %p is added
CALENDARS = ("linear", "cyclical", "none")
DAY = 86_400


# ----------------------------------------------------------------------------- reading


@dataclass
class Table:
    """The columns of a CSV or Parquet file that forecasting needs, as read (before cleaning)."""

    path: Path
    sha256: str
    time_column: str
    times: np.ndarray  # datetime64[s], NaT where the cell was empty
    columns: dict[str, np.ndarray]  # target name -> float64 values, NaN where missing
    time_format: str  # "iso" (also for times converted to UTC) or the strptime format that read every time
    rows: int
    covariates: dict[str, np.ndarray] = field(default_factory=dict)  # covariate name -> float64 values


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_parquet(path: Path) -> bool:
    """Parquet by the file's suffix, or by its first bytes (a Parquet file named .csv or without a suffix)."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        return handle.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC


def read_table(
    path: str | Path,
    time_column: str,
    targets: list[str],
    time_format: str | None = None,
    dayfirst: bool | None = None,
    covariates: list[str] | tuple[str, ...] = (),
) -> Table:
    """Read ``time_column``, the ``targets`` and the ``covariates`` of a CSV file (header row first) or a
    Parquet file.

    Times are parsed by ``parse_times`` (``time_format`` overrides the detection, ``dayfirst``
    settles day/month ambiguity); numbers by ``parse_numbers``. Any problem is one clear error.
    """
    path = Path(path)
    if not path.exists():
        raise TextrnnError(f"{path} does not exist: give a CSV file with a header row, or a Parquet file")
    if not path.is_file():
        raise TextrnnError(f"{path} is not a file: give a CSV file with a header row, or a Parquet file")
    if not targets and not covariates:
        raise TextrnnError("no --target column given")
    _check_covariates(time_column, targets, covariates)
    wanted = [time_column, *targets, *covariates]
    frame = _read_parquet(path, wanted, covariates) if is_parquet(path) else _read_csv(path, wanted, covariates)
    if len(frame) == 0:
        raise TextrnnError(f"{path} has a header but no rows")
    times, used_format = _times_of(frame[time_column], time_format, dayfirst, f"{path} column {time_column!r}")
    columns = {name: parse_numbers(frame[name], f"{path} column {name!r}") for name in targets}
    others = {name: parse_numbers(frame[name], f"{path} column {name!r}") for name in covariates}
    for name, values in others.items():
        if np.isnan(values).all():
            raise TextrnnError(
                f"{path} column {name!r} has no values: every cell is missing; a covariate needs values "
                "(leave it out of --covariates / --future-covariates)"
            )
    return Table(path, file_sha256(path), time_column, times, columns, used_format, len(frame), others)


read_csv = read_table  # the name forecasting has always imported


def read_future(
    path: str | Path,
    time_column: str,
    names: tuple[str, ...],
    time_format: str | None = None,
    dayfirst: bool | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The known-ahead covariates ``names`` of the steps to forecast (``predict --future-csv``): times (N,)
    and name -> (N,) values, NaN where missing."""
    table = read_table(path, time_column, [], time_format, dayfirst, covariates=names)
    return table.times, table.covariates


def _check_covariates(time_column: str, targets, covariates) -> None:
    """A covariate is another column: not the time, not a target, not named twice."""
    for name in covariates:
        if name == time_column or name in targets:
            role = "the time column" if name == time_column else "a target"
            raise TextrnnError(f"column {name!r} is {role}: it cannot be a covariate too")
        if list(covariates).count(name) > 1:
            raise TextrnnError(
                f"column {name!r} is named twice among the covariates: give it once, with --covariates (observed) "
                "or --future-covariates (known ahead)"
            )


def _check_columns(path: Path, header: list[str], wanted: list[str], covariates=()) -> None:
    missing = [name for name in dict.fromkeys(wanted) if name not in header]
    if missing:
        options = "--covariates / --future-covariates" if set(missing) <= set(covariates) else "--time-col / --target"
        raise TextrnnError(
            f"{path} has no column {', '.join(repr(m) for m in missing)}; its columns are "
            f"{', '.join(header[:20])}{' ...' if len(header) > 20 else ''} (choose with {options})"
        )


def _read_csv(path: Path, wanted: list[str], covariates=()) -> pd.DataFrame:
    """The ``wanted`` columns as text (stripped header names; separator sniffed among , ; tab |)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(64 * 1024)
    except UnicodeDecodeError as error:
        raise TextrnnError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not sample.strip():
        raise TextrnnError(f"{path} is empty: give a CSV file with a header row")
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    options = {
        "sep": dialect.delimiter,
        "quotechar": dialect.quotechar or '"',
        "encoding": "utf-8-sig",
        "index_col": False,  # never take a column as the index, even when rows have more fields than the header
        "dtype": str,  # cells as written: times and numbers are parsed below, with errors naming the row
        "keep_default_na": False,
        "na_filter": False,
    }
    wanted_names = set(wanted)
    try:
        header = [str(name).strip() for name in pd.read_csv(path, nrows=0, **options).columns]
        _check_columns(path, header, wanted, covariates)
        frame = pd.read_csv(path, usecols=lambda name: str(name).strip() in wanted_names, **options)
    except UnicodeDecodeError as error:
        raise TextrnnError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as error:
        raise TextrnnError(f"{path} is not a readable CSV file ({str(error).strip()})") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    return frame.loc[:, ~frame.columns.duplicated()]


def _read_parquet(path: Path, wanted: list[str], covariates=()) -> pd.DataFrame:
    """The ``wanted`` columns of a Parquet file, with their stored types."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise TextrnnError(
            f"{path} is a Parquet file, and reading Parquet needs pyarrow: pip install pyarrow"
        ) from None
    try:
        header = [str(name) for name in parquet.read_schema(path).names]
        _check_columns(path, header, wanted, covariates)
        return parquet.read_table(path, columns=list(dict.fromkeys(wanted))).to_pandas()
    except TextrnnError:
        raise
    except Exception as error:  # pyarrow raises several types (ArrowInvalid, OSError, ...) for a damaged file
        raise TextrnnError(f"{path} is not a readable Parquet file ({str(error).strip()[:200]})") from None


def _times_of(column: pd.Series, time_format: str | None, dayfirst: bool | None, where: str):
    """A time column as stored (timestamps in Parquet, text in CSV) -> datetime64[s] in UTC or wall-clock time."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return _naive(column), "iso"
    if pd.api.types.is_numeric_dtype(column):
        raise TextrnnError(f"{where} holds numbers, not times: store the times as timestamps or text")
    texts = column.where(column.notna(), "").astype(str)
    return parse_times(texts, time_format, where, dayfirst=dayfirst)


def _naive(times: pd.Series) -> np.ndarray:
    """Timestamps -> datetime64[s]; aware ones converted to UTC first."""
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times.to_numpy().astype("datetime64[s]")


def parse_numbers(cells, where: str) -> np.ndarray:
    """Numbers, with the cells of ``MISSING`` (and infinities) as NaN; any other non-number is refused, naming the row."""
    column = pd.Series(cells)
    if pd.api.types.is_bool_dtype(column) or not (
        pd.api.types.is_numeric_dtype(column) or pd.api.types.is_string_dtype(column) or column.dtype == object
    ):
        raise TextrnnError(f"{where} is not numeric: it holds {column.dtype} values")
    if pd.api.types.is_numeric_dtype(column):  # typed (Parquet): nothing to parse
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        texts = column.where(column.notna(), "").astype(str).str.strip()
        lower = texts.str.lower()
        missing = lower.isin(MISSING).to_numpy()
        values = pd.to_numeric(texts.where(~missing, None), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        wrong = np.flatnonzero(~missing & np.isnan(values) & ~lower.isin(("+nan", "-nan")).to_numpy())
        if len(wrong):
            raise TextrnnError(
                f"{where} is not numeric: row {wrong[0] + 2} holds {texts.iloc[wrong[0]][:40]!r} "
                f"(missing values may be empty or one of {', '.join(sorted(m for m in MISSING if m))})"
            )
    values = np.where(np.isfinite(values), values, np.nan)
    return values


def parse_times(cells, time_format: str | None, where: str, dayfirst: bool | None = None) -> tuple[np.ndarray, str]:
    """Timestamps as text -> datetime64[s] (NaT for empty cells) and the format that read them all.

    Without ``time_format``, pandas guesses the format of the first time. A date that could be
    day- or month-first is decided by the data: the usual order for its separator is tried first
    (month-first with ``/`` as in US data, day-first with ``.`` or ``-``), and the other when a
    time does not fit it (a day above 12); ``dayfirst`` fixes the order. ISO 8601 is read as a
    whole (any mix of its forms), and times with a UTC offset or zone are converted to UTC.
    """
    cells = pd.Series(cells, dtype=object)
    texts = cells.where(cells.notna(), "").astype(str).str.strip()
    present = (texts != "").to_numpy()
    if not present.any():
        raise TextrnnError(f"{where} is empty: there are no timestamps")
    first = texts[present].iloc[0]
    candidates = [time_format] if time_format else _candidate_formats(first, dayfirst)
    if not candidates:
        raise TextrnnError(
            f"{where} holds {first[:40]!r}, which is not a time this reader knows "
            "(ISO 8601, 10/1/2004 1:00, 1.10.2004, ...): give its strptime format with --time-format, e.g. '%d/%m/%Y %H:%M'"
        )
    furthest = (-1, "", "")  # the failure after the most rows read: (row index, text, format)
    for candidate in candidates:
        parsed = _parse_as(texts.where(present, None), candidate)
        wrong = np.flatnonzero(present & np.isnat(parsed))
        if len(wrong) == 0:
            return parsed, "iso" if candidate == "iso" or "%z" in candidate or "%Z" in candidate else candidate
        if wrong[0] > furthest[0]:
            furthest = (int(wrong[0]), texts.iloc[wrong[0]], candidate)
    row, text, candidate = furthest
    if time_format:
        raise TextrnnError(
            f"{where}: row {row + 2} holds {text[:40]!r}, which does not match --time-format {time_format!r}"
        )
    if present[:row].any():
        raise TextrnnError(
            f"{where}: row {row + 2} holds {text[:40]!r}, which is not a time in the format of the rows before it "
            f"({'ISO 8601' if candidate == 'iso' else candidate}); fix the row or give --time-format"
        )
    raise TextrnnError(
        f"{where} holds {text[:40]!r}, which is not a time this reader knows "
        "(ISO 8601, 10/1/2004 1:00, 1.10.2004, ...): give its strptime format with --time-format, e.g. '%d/%m/%Y %H:%M'"
    )


def _candidate_formats(text: str, dayfirst: bool | None) -> list[str]:
    """The formats pandas guesses for ``text``, most likely first: ``"iso"`` or strptime formats."""
    meridian = _MERIDIAN.search(text)
    if meridian:  # pandas guesses no 12-hour clock: guess the rest, then read the hour as %I with %p
        text = text[: meridian.start()]
    if dayfirst is None:
        orders = (False, True) if "/" in text else (True, False)
    else:
        orders = (dayfirst, not dayfirst)
    candidates = []
    for order in orders:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas warns when it guesses against dayfirst; the data decides here
            guess = guess_datetime_format(text, dayfirst=order)
        if guess is None or re.search(r"%Y\W?%d\W?%m", guess):  # nobody writes year, day, month
            continue
        if meridian:
            if "%H" not in guess:
                continue
            guess = guess.replace("%H", "%I") + meridian.group(1) + "%p"
        if _ISO_FORMAT.fullmatch(guess):
            guess = "iso"
        # "May" is a full month name and an abbreviation: with %B guessed, %b is the other reading.
        for candidate in (guess, guess.replace("%B", "%b")):
            if candidate not in candidates:
                candidates.append(candidate)
        if dayfirst is not None:  # the order given, or the other for year-first dates, where it makes no difference
            break
    return candidates


def _parse_as(texts: pd.Series, time_format: str) -> np.ndarray:
    """Text (None where empty) -> datetime64[s], NaT where a time does not fit ``time_format``; offsets to UTC."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(
            texts, format="ISO8601" if time_format == "iso" else time_format, errors="coerce", utc=True
        )
    return _naive(parsed)


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
    target, then calendar features and covariates: see ``window_features``) and predicts
    ``values[s + lookback : s + lookback + horizon]``.
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
    covariate_scalers: list[dict[str, Scaler]] = field(default_factory=list)  # per series: name -> scaler

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
    *,
    observed: tuple[str, ...] = (),
    known: tuple[str, ...] = (),
    country: str | None = None,
    covariate_scalers: list[dict[str, Scaler]] | None = None,
) -> Dataset:
    """Scale each series (scalers fitted on its training part unless given), add calendar features and index
    the windows. With ``scalers`` given (a stored model on a new file) every window is a test window.

    ``observed`` and ``known`` name covariates of the series (known up to the forecast time, and known
    ahead), each scaled like the target (``covariate_scalers`` given with ``scalers``); ``country`` adds
    its public holidays as a known-ahead 0/1 feature. See ``window_features`` for the columns.
    """
    features, values, raw, times, series_of, names, fitted, first_test = [], [], [], [], [], [], [], []
    fitted_covariates = []
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
        scaled = _scaled(scaler, item.values, f"series {item.name!r}")
        own, columns = {}, {"observed": [], "known": []}
        for kind, wanted in (("observed", observed), ("known", known)):
            for name in wanted:
                if name not in item.covariates:
                    raise TextrnnError(f"series {item.name!r} has no covariate {name!r}: read it with the series")
                column = item.covariates[name]
                given = covariate_scalers[number][name] if covariate_scalers is not None else None
                own[name] = given or Scaler.fit(column[: bounds["train"][1]])
                columns[kind].append(_scaled(own[name], column, f"covariate {name!r} of series {item.name!r}"))
        if country:
            columns["known"].append(holiday_flags(item.times, country))
        known_columns, observed_columns = (_stacked(columns[kind], length) for kind in ("known", "observed"))
        features.append(window_features(item.times, scaled, calendar, known_columns, observed_columns))
        fitted_covariates.append(own)
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
        covariate_scalers=fitted_covariates,
    )


def _stacked(columns: list[np.ndarray], length: int) -> np.ndarray:
    return np.stack(columns, axis=1) if columns else np.zeros((length, 0), np.float32)


def _scaled(scaler: Scaler, values: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        scaled = scaler.transform(values).astype(np.float32)
    if not np.isfinite(scaled).all():
        raise TextrnnError(
            f"{what} has values beyond 1e38 times the range of its training part "
            f"({scaler.minimum:g} to {scaler.maximum:g}): they cannot be scaled; check the data"
        )
    return scaled


def prediction_inputs(
    item: Series,
    scaler: Scaler,
    covariate_scalers: dict[str, Scaler],
    calendar: str,
    lookback: int,
    horizon: int,
    steps: int,
    *,
    observed: tuple[str, ...] = (),
    known: tuple[str, ...] = (),
    country: str | None = None,
    future: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What forecasting ``steps`` past the end of ``item`` reads: the times of the steps (S,) and feature rows
    (``window_features``) for the last ``lookback`` observed times and then whole horizons after them,
    (lookback + ceil(S / horizon) * horizon, F).

    The caller fills the target column (0) of the rows after ``lookback`` with its forecasts as it goes,
    ``horizon`` at a time; a model that reads the known-ahead columns of the times it forecasts finds them
    there. ``future`` = (times, name -> values) gives the known-ahead covariates of the steps
    (``read_future``); past the steps asked, the last step's values are repeated. Observed covariates are
    known only up to the forecast time: with them, ``steps`` is at most ``horizon``.
    """
    if steps < 1:
        raise TextrnnError(f"--steps must be at least 1, got {steps}")
    start, end = item.segments[-1]
    if end - start < lookback:
        raise TextrnnError(
            f"series {item.name!r} ends with {end - start} contiguous points, fewer than the --lookback of "
            f"{lookback} the model reads: there is nothing to forecast from"
        )
    if observed and steps > horizon:
        raise TextrnnError(
            f"the model reads observed covariates ({', '.join(observed)}), known only up to the forecast time: "
            f"it forecasts at most its --horizon of {horizon} steps; ask --steps {horizon} or fewer"
        )
    step = np.timedelta64(item.step_seconds, "s")
    history = slice(end - lookback, end)
    ahead = -(-steps // horizon) * horizon  # whole horizons
    times = np.concatenate([item.times[history], item.times[end - 1] + step * np.arange(1, ahead + 1)])

    def laid_out(history_values: np.ndarray, future_values: np.ndarray | None = None) -> np.ndarray:
        column = np.zeros(len(times), dtype=np.float32)
        column[:lookback] = history_values
        if future_values is not None:
            column[lookback : lookback + steps] = future_values
            column[lookback + steps :] = future_values[-1]
        return column

    scaled = laid_out(_scaled(scaler, item.values[history], f"series {item.name!r}"))
    known_columns = []
    if known:
        given = _future_values(future, known, times[lookback : lookback + steps], item.times[end - 1])
        for name in known:
            history_values = _scaled(covariate_scalers[name], item.covariates[name][history], f"covariate {name!r}")
            future_values = _scaled(covariate_scalers[name], given[name], f"--future-csv column {name!r}")
            known_columns.append(laid_out(history_values, future_values))
    if country:
        known_columns.append(holiday_flags(times, country))
    observed_columns = [
        laid_out(_scaled(covariate_scalers[name], item.covariates[name][history], f"covariate {name!r}"))
        for name in observed
    ]
    rows = window_features(
        times, scaled, calendar, _stacked(known_columns, len(times)), _stacked(observed_columns, len(times))
    )
    return times[lookback : lookback + steps], rows


def _future_values(future, names: tuple[str, ...], times: np.ndarray, last: np.datetime64) -> dict[str, np.ndarray]:
    """The known-ahead covariates at ``times`` (duplicated times averaged); refuses, naming what is missing."""
    if future is None:
        raise TextrnnError(
            f"the model reads known-ahead covariates ({', '.join(names)}): give their values for the {len(times)} "
            f"steps after {last} with --future-csv FILE (the time column and {', '.join(names)})"
        )
    future_times, columns = future
    values = {}
    for name in names:
        frame = pd.DataFrame({"time": future_times, "value": columns[name]}).dropna()
        column = frame.groupby("time")["value"].mean().reindex(pd.DatetimeIndex(times)).to_numpy(np.float64)
        missing = np.flatnonzero(np.isnan(column))
        if len(missing):
            raise TextrnnError(
                f"--future-csv gives no {name!r} for {times[missing[0]]}"
                f"{f' and {len(missing) - 1} more of the {len(times)} steps asked' if len(missing) > 1 else ''}: "
                "predict needs the known-ahead covariates of every step it forecasts"
            )
        values[name] = column
    return values


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


# ----------------------------------------------------------------------------- prediction intervals


def interval_pairs(levels) -> list[tuple[int, int]]:
    """Central intervals of quantile ``levels`` (increasing): the outermost pair, then inwards, as index pairs."""
    return [(low, len(levels) - 1 - low) for low in range(len(levels) // 2)]


def interval_key(lower: float, upper: float) -> str:
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
