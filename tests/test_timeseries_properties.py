"""Property tests of reading time series: the same series, written in any common date format, with any
separator and quoting, as CSV or Parquet, with UTC offsets or as local wall-clock times across daylight-saving
changes, reads (and cleans) to the same result."""

import csv
import functools
import io
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from textrnn.timeseries.clean import clean
from textrnn.timeseries.read import read_table

PROPERTIES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _strftime(pattern):
    return lambda moment: moment.strftime(pattern)


# How people write times: a name -> a writer of naive datetimes. Those marked day-first and written with "/"
# are ambiguous until a day above 12 appears; the others read with no flag whatever the dates.
FORMATS = {
    "iso space": _strftime("%Y-%m-%d %H:%M:%S"),
    "iso T minutes": _strftime("%Y-%m-%dT%H:%M"),
    "iso mixed": lambda moment: moment.strftime("%Y-%m-%dT%H:%M" if moment.hour % 2 else "%Y-%m-%d %H:%M:%S"),
    "us padded": _strftime("%m/%d/%Y %H:%M"),
    "us like AEP": lambda moment: f"{moment.month}/{moment.day}/{moment.year} {moment.hour}:{moment.minute:02d}",
    "us 12-hour": _strftime("%m/%d/%Y %I:%M:%S %p"),
    "pjm data miner": lambda moment: (
        f"{moment.month}/{moment.day}/{moment.year} {moment.hour % 12 or 12}:{moment.minute:02d}:00 "
        f"{'AM' if moment.hour < 12 else 'PM'}"
    ),
    "day-first slash": _strftime("%d/%m/%Y %H:%M"),
    "day-first dots": _strftime("%d.%m.%Y %H:%M"),
    "day-first dashes": _strftime("%d-%m-%Y %H:%M"),
    "year slash": _strftime("%Y/%m/%d %H:%M"),
    "compact": _strftime("%Y%m%d%H%M"),
    "day month name": _strftime("%d %b %Y %H:%M"),
    "month name day": _strftime("%b %d, %Y %H:%M"),
}
ZONES = (
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Europe/London",
    "Australia/Sydney",
    "America/St_Johns",  # offsets of -3:30 and -2:30
    "Asia/Kolkata",  # +5:30, no daylight saving
)
MISSING_CELLS = ("", "NA", "null", "nan", "-", "?", "N/A")


def dayfirst_needed(name: str, moments) -> bool | None:
    """--dayfirst for a day-first "/" file whose days are all 12 or less (nothing in the data says day-first)."""
    if name == "day-first slash" and all(moment.day <= 12 for moment in moments):
        return True
    return None


def write_csv(path, header, rows, separator, quoting, line_end, bom):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=separator, quoting=quoting, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(("\ufeff" if bom else "").encode() + buffer.getvalue().encode("utf-8"))


def value_cell(value: float, missing: str) -> str:
    return missing if math.isnan(value) else repr(value)


_VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(float),
    st.floats(-1e9, 1e9, allow_nan=False).map(lambda value: round(value, 3)),
    st.just(math.nan),
)


@PROPERTIES
@given(
    start=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2035, 12, 1)),
    offsets=st.lists(st.integers(0, 24 * 60), min_size=1, max_size=60),  # hours after start: any order, repeats
    values=st.lists(_VALUES, min_size=60, max_size=60),
    format_name=st.sampled_from(sorted(FORMATS)),
    separator=st.sampled_from([",", ";", "\t", "|"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    line_end=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    missing=st.sampled_from(MISSING_CELLS),
    container=st.sampled_from(["csv", "parquet text", "parquet timestamps"]),
)
def test_any_common_format_reads_to_the_same_times_and_values(
    start, offsets, values, format_name, separator, quoting, line_end, bom, missing, container, tmp_path_factory
):
    start = start.replace(minute=0, second=0, microsecond=0)
    moments = [start + timedelta(hours=hours) for hours in offsets]
    values = values[: len(moments)]
    path = tmp_path_factory.mktemp("formats") / ("series.parquet" if container != "csv" else "series.csv")
    texts = [FORMATS[format_name](moment) for moment in moments]
    if container == "csv":
        rows = [["x", text, value_cell(value, missing)] for text, value in zip(texts, values)]
        write_csv(path, ["other", "when", "load"], rows, separator, quoting, line_end, bom)
    else:
        pytest.importorskip("pyarrow")
        stored_times = texts if container == "parquet text" else pd.to_datetime(moments)
        pd.DataFrame({"when": stored_times, "load": values, "other": "x"}).to_parquet(path)
    table = read_table(path, "when", ["load"], dayfirst=dayfirst_needed(format_name, moments))
    assert table.times.tolist() == np.array(moments, dtype="datetime64[s]").tolist()
    assert np.array_equal(table.columns["load"], np.array(values), equal_nan=True)
    assert table.rows == len(moments)


@PROPERTIES
@given(
    start=st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2030, 12, 1)),
    count=st.integers(1, 80),
    zone=st.sampled_from(ZONES),
    separator=st.sampled_from(["T", " "]),
    basic_offset=st.booleans(),
    container=st.sampled_from(["csv", "parquet timestamps"]),
)
def test_times_with_offsets_read_as_utc(start, count, zone, separator, basic_offset, container, tmp_path_factory):
    """Each time written in its zone's offset of the moment (both sides of every daylight-saving change)."""
    start = start.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
    instants = [start + timedelta(hours=hours) for hours in range(count)]
    local = [instant.astimezone(ZoneInfo(zone)) for instant in instants]
    path = tmp_path_factory.mktemp("zones") / f"series.{'csv' if container == 'csv' else 'parquet'}"
    if container == "csv":
        if basic_offset:  # +0530 rather than +05:30
            texts = [moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S%z") for moment in local]
        else:
            texts = [moment.isoformat(sep=separator) for moment in local]
        write_csv(path, ["time", "load"], [[text, hours] for hours, text in enumerate(texts)], ",", 0, "\n", False)
    else:
        pytest.importorskip("pyarrow")
        stamps = pd.DatetimeIndex(instants).tz_convert(zone)
        pd.DataFrame({"time": stamps, "load": np.arange(count, dtype=float)}).to_parquet(path)
    table = read_table(path, "time", ["load"])
    expected = [np.datetime64(instant.replace(tzinfo=None), "s") for instant in instants]
    assert table.times.tolist() == expected and table.time_format == "iso"
    assert table.columns["load"].tolist() == list(range(count))


@functools.cache
def transitions(zone: str, year: int) -> tuple[datetime, ...]:
    """The UTC hours at which ``zone`` changes its offset in ``year`` (daylight saving on and off)."""
    info = ZoneInfo(zone)
    hour = datetime(year, 1, 1, tzinfo=UTC)
    changes, offset = [], hour.astimezone(info).utcoffset()
    for _ in range(366 * 24):
        hour += timedelta(hours=1)
        now = hour.astimezone(info).utcoffset()
        if now != offset:
            changes.append(hour)
            offset = now
    return tuple(changes)


@PROPERTIES
@given(
    zone=st.sampled_from(["America/New_York", "Europe/Berlin", "Europe/London", "Australia/Sydney"]),
    year=st.integers(1996, 2030),
    which=st.integers(0, 1),
    before=st.integers(0, 30),
    count=st.integers(3, 90),
    values=st.lists(st.integers(0, 10**5), min_size=90, max_size=90),
    format_name=st.sampled_from(sorted(FORMATS)),
)
def test_local_times_across_daylight_saving_clean_to_one_regular_series(
    zone, year, which, before, count, values, format_name, tmp_path_factory
):
    """Wall-clock times: the autumn hour is written twice (averaged), the spring hour never (interpolated)."""
    changes = transitions(zone, year)
    assume(len(changes) == 2)
    start = changes[which] - timedelta(hours=before)
    walls = [(start + timedelta(hours=hours)).astimezone(ZoneInfo(zone)).replace(tzinfo=None) for hours in range(count)]
    values = [float(value) for value in values[:count]]
    path = tmp_path_factory.mktemp("local") / "series.csv"
    write_csv(
        path, ["time", "load"], [[FORMATS[format_name](w), v] for w, v in zip(walls, values)], ",", 0, "\n", False
    )
    table = read_table(path, "time", ["load"], dayfirst=dayfirst_needed(format_name, walls))
    assume(len(set(walls)) >= 2)
    series = clean(table.times, table.columns["load"], "load", max_gap=6)

    readings: dict[datetime, list[float]] = {}
    for wall, value in zip(walls, values):
        readings.setdefault(wall, []).append(value)
    hours = int((max(walls) - min(walls)) / timedelta(hours=1)) + 1
    grid = [min(walls) + timedelta(hours=hour) for hour in range(hours)]
    assert series.times.tolist() == np.array(grid, dtype="datetime64[s]").tolist()
    assert series.segments == [(0, hours)]
    assert series.report["duplicated_times"] == sum(len(given) == 2 for given in readings.values())
    assert series.report["missing_times"] == series.report["filled"] == hours - len(readings)
    for index, wall in enumerate(grid):
        if wall in readings:
            assert series.values[index] == sum(readings[wall]) / len(readings[wall])
        else:  # the skipped spring hour: halfway between its neighbours
            assert series.values[index] == pytest.approx((series.values[index - 1] + series.values[index + 1]) / 2)
