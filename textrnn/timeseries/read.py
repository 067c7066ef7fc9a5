"""Reading time series: the time, target and covariate columns of a CSV or Parquet file through pandas, the time
column parsed (formats guessed, day/month order from the data or ``dayfirst``, 12-hour clocks, offsets to UTC),
numbers checked cell by cell; and times written back in the format the file used (``format_times``).
"""

from __future__ import annotations

import csv
import hashlib
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


@dataclass
class Table:
    """The columns of a CSV or Parquet file that forecasting needs, as read (before cleaning): R = ``rows``."""

    path: Path
    sha256: str
    time_column: str
    times: np.ndarray  # (R,) datetime64[s], NaT where the cell was empty
    columns: dict[str, np.ndarray]  # target name -> (R,) float64 values, NaN where missing
    time_format: str  # "iso" (also for times converted to UTC) or the strptime format that read every time
    rows: int
    covariates: dict[str, np.ndarray] = field(default_factory=dict)  # covariate name -> (R,) float64 values


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, as hex (read in 1 MiB blocks)."""
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
    """Refuses a file whose ``header`` lacks a ``wanted`` column, naming it, the file's columns and the option."""
    missing = [name for name in dict.fromkeys(wanted) if name not in header]
    if missing:
        options = "--covariates / --future-covariates" if set(missing) <= set(covariates) else "--time-col / --target"
        raise TextrnnError(
            f"{path} has no column {', '.join(repr(m) for m in missing)}; its columns are "
            f"{', '.join(header[:20])}{' ...' if len(header) > 20 else ''} (choose with {options})"
        )


def read_csv_columns(path: Path, wanted: list[str] | None, text: list[str] | None = None) -> pd.DataFrame:
    """The ``wanted`` columns of a CSV file (None: all of them), every problem one clear error: all as text, or
    with ``text`` only those columns, the others parsed by pandas (numbers where they all are; much faster)."""
    return _read_csv(Path(path), wanted, text=text)


def _read_csv(path: Path, wanted: list[str] | None, covariates=(), text: list[str] | None = None) -> pd.DataFrame:
    """The ``wanted`` columns (None: all) as text (stripped header names; separator sniffed among , ; tab |), or
    only the ``text`` columns so, the others parsed by pandas."""
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
    if text is not None:
        options.update(dtype={name: str for name in text}, keep_default_na=True, na_filter=True)
    try:
        header = [str(name).strip() for name in pd.read_csv(path, nrows=0, **options).columns]
        wanted_names = set(header if wanted is None else wanted)
        _check_columns(path, header, header if wanted is None else wanted, covariates)
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
    """A time column (R,) as stored (timestamps in Parquet, text in CSV) -> (R,) datetime64[s] in UTC or
    wall-clock time, and the format that read it (``parse_times``)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return _naive(column), "iso"
    if pd.api.types.is_numeric_dtype(column):
        raise TextrnnError(f"{where} holds numbers, not times: store the times as timestamps or text")
    texts = column.where(column.notna(), "").astype(str)
    return parse_times(texts, time_format, where, dayfirst=dayfirst)


def _naive(times: pd.Series) -> np.ndarray:
    """Timestamps (N,) -> (N,) datetime64[s]; aware ones converted to UTC first."""
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times.to_numpy().astype("datetime64[s]")


def parse_numbers(cells, where: str) -> np.ndarray:
    """Cells (N,) -> (N,) float64, with the cells of ``MISSING`` (and infinities) as NaN; any other non-number
    is refused, naming the row."""
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
    """Timestamps as text (N,) -> (N,) datetime64[s] (NaT for empty cells) and the format that read them all.

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
    """Text (N,) (None where empty) -> (N,) datetime64[s], NaT where a time does not fit ``time_format``;
    offsets to UTC."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(
            texts, format="ISO8601" if time_format == "iso" else time_format, errors="coerce", utc=True
        )
    return _naive(parsed)


def format_times(times: np.ndarray, time_format: str) -> list[str]:
    """(N,) datetime64[s] -> N texts in the format the file used (ISO for ``"iso"``)."""
    values = times.astype("datetime64[s]").tolist()
    if time_format == "iso":
        return [value.isoformat(sep=" ") for value in values]
    return [value.strftime(time_format) for value in values]
