"""CSV and Parquet reading, cleaning (duplicates, gaps, daylight saving), calendar features, scaling, windows,
metrics."""

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from textrnn.errors import TextrnnError
from textrnn.timeseries.clean import clean, describe
from textrnn.timeseries.features import Scaler, calendar_features
from textrnn.timeseries.metrics import baseline_forecasts, metrics
from textrnn.timeseries.read import parse_times, read_table
from textrnn.timeseries.read import read_table as read_csv
from textrnn.timeseries.windows import build_dataset, split_points, window_indices

AEP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "AEP_hourly.csv"
# PJM Data Miner's hourly metered load export (hour-beginning times in UTC and in Eastern Prevailing Time,
# 12-hour clock): AEP's load around the autumn daylight-saving change of 2017.
PJM = Path(__file__).resolve().parent / "data" / "pjm_hrl_load_metered.csv"


def times(*texts):
    return np.array(texts, dtype="datetime64[s]")


def hourly(count, start="2020-01-01T00:00"):
    return np.datetime64(start, "s") + np.timedelta64(3600, "s") * np.arange(count)


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "cells, expected",
    [
        (["10/1/2004 1:00", "10/1/2004 2:00"], ["2004-10-01T01:00", "2004-10-01T02:00"]),
        (["2004-10-01 01:00:00", "2004-10-01T02:00"], ["2004-10-01T01:00", "2004-10-01T02:00"]),
        (["2004-10-01T01:00+02:00"], ["2004-09-30T23:00"]),  # an offset is converted to UTC
        (["12/01/2020 00:00", "13/01/2020 00:00"], ["2020-01-12T00:00", "2020-01-13T00:00"]),  # day 13: day-first
        (["1.10.2004 01:00", ""], ["2004-10-01T01:00", "NaT"]),
    ],
)
def test_common_time_formats_are_detected(cells, expected):
    parsed, _ = parse_times(cells, None, "test")
    assert parsed.tolist() == times(*expected).tolist()


def test_an_unparseable_time_is_one_clear_error():
    with pytest.raises(TextrnnError, match="not a time this reader knows.*--time-format"):
        parse_times(["yesterday", "today"], None, "test")
    with pytest.raises(TextrnnError, match="row 3 holds 'soon'"):
        parse_times(["2020-01-01 00:00", "soon"], None, "test")
    parsed, _ = parse_times(["01|02|2020"], "%d|%m|%Y", "test")
    assert parsed[0] == np.datetime64("2020-02-01")


def test_read_csv_reads_missing_values_and_refuses_words(tmp_path):
    path = write(
        tmp_path, "\ufefftime;load;other\n2020-01-01 00:00;1.5;x\n2020-01-01 01:00;NA;y\n2020-01-01 02:00;;z\n"
    )
    table = read_csv(path, "time", ["load"])
    assert np.isnan(table.columns["load"][1:]).all() and table.columns["load"][0] == 1.5
    assert table.rows == 3
    with pytest.raises(TextrnnError, match="column 'other' is not numeric: row 2 holds 'x'"):
        read_csv(path, "time", ["other"])
    with pytest.raises(TextrnnError, match="has no column 'AEP_MW'; its columns are time, load, other"):
        read_csv(path, "time", ["AEP_MW"])
    with pytest.raises(TextrnnError, match="does not exist"):
        read_csv(tmp_path / "nothing.csv", "time", ["load"])
    with pytest.raises(TextrnnError, match="is empty"):
        read_csv(write(tmp_path, "", "empty.csv"), "time", ["load"])


@pytest.mark.parametrize(
    "cells, dayfirst, expected",
    [
        (["01/02/2020 00:00", "01/02/2020 01:00"], None, "2020-01-02T00:00"),  # ambiguous with '/': month-first
        (["01/02/2020 00:00", "01/02/2020 01:00"], True, "2020-02-01T00:00"),
        (["01.02.2020 00:00"], None, "2020-02-01T00:00"),  # with '.': day-first
        (["01.02.2020 00:00"], False, "2020-01-02T00:00"),
        (["2020-01-02 00:00"], True, "2020-01-02T00:00"),  # year-first dates are never year-day-month
        (["10/1/2004 1:00:00 PM"], None, "2004-10-01T13:00"),
        (["10/1/2004 12:00 am"], None, "2004-10-01T00:00"),
        (["Oct 1, 2004 01:00"], None, "2004-10-01T01:00"),
        (["1 Oct 2004 01:00"], None, "2004-10-01T01:00"),
        (["01 May 2000 00:00", "01 Jun 2000 00:00"], None, "2000-05-01T00:00"),  # May: %B or %b
        (["200410010100"], None, "2004-10-01T01:00"),
        (["2004/10/01 01:00"], None, "2004-10-01T01:00"),
        (["2004-10-01T01:00:00Z"], None, "2004-10-01T01:00"),
        (["2004-10-01 01:00:00 UTC"], None, "2004-10-01T01:00"),
        (["2004-10-01T01:00:00.000-04:00"], None, "2004-10-01T05:00"),
    ],
)
def test_formats_that_pandas_guesses_and_the_day_first_choice(cells, dayfirst, expected):
    parsed, _ = parse_times(cells, None, "test", dayfirst=dayfirst)
    assert parsed[0] == np.datetime64(expected)


def test_a_day_above_12_anywhere_makes_the_file_day_first():
    cells = [f"{day:02d}/03/2021 00:00" for day in range(1, 21)]  # ambiguous until the 13th row
    parsed, used = parse_times(cells, None, "test")
    assert used == "%d/%m/%Y %H:%M" and parsed[12] == np.datetime64("2021-03-13")
    with pytest.raises(TextrnnError, match="row 14 holds '13/03/2021 00:00'.*%m/%d/%Y"):
        parse_times(cells, None, "test", dayfirst=False)  # --monthfirst insists
    with pytest.raises(TextrnnError, match="row 3 holds '2021-01-01', which does not match --time-format"):
        parse_times(["01/02/2021", "2021-01-01"], "%d/%m/%Y", "test")


def test_offsets_across_daylight_saving_become_one_utc_grid(tmp_path):
    # New York's autumn change: 01:00 happens at -04:00 and again at -05:00.
    utc = pd.date_range("2021-11-07 03:00", periods=6, freq="h", tz="UTC")
    local = utc.tz_convert("America/New_York")
    path = write(tmp_path, "time,load\n" + "".join(f"{t.isoformat()},{n}\n" for n, t in enumerate(local)))
    table = read_table(path, "time", ["load"])
    assert (
        table.time_format == "iso"
        and table.times.tolist() == utc.tz_localize(None).to_numpy().astype("datetime64[s]").tolist()
    )
    series = clean(table.times, table.columns["load"], "load", max_gap=2)
    assert series.report["duplicated_times"] == 0 and series.report["missing_times"] == 0
    # The same hours as local wall-clock times: the repeated hour is averaged.
    path = write(
        tmp_path, "time,load\n" + "".join(f"{t:%Y-%m-%d %H:%M},{n}\n" for n, t in enumerate(local)), "local.csv"
    )
    table = read_table(path, "time", ["load"])
    series = clean(table.times, table.columns["load"], "load", max_gap=2)
    assert series.report["duplicated_times"] == 1 and series.values.tolist() == [0.0, 1.0, 2.5, 4.0, 5.0]


def test_csv_quirks_are_read(tmp_path):
    # Spaces around header names, tab separators, quoted cells, CRLF line ends, a row with more fields.
    path = tmp_path / "quirks.tsv"
    path.write_bytes(b' time \t"load"\r\n"2021-01-01 00:00"\t1\r\n2021-01-01 01:00\t"2"\textra\r\n')
    table = read_table(path, "time", ["load"])
    assert table.columns["load"].tolist() == [1.0, 2.0] and table.rows == 2
    assert read_table(write(tmp_path, "time|load\n2021-01-01 00:00| 3 \n", "pipe.csv"), "time", ["load"]).columns[
        "load"
    ].tolist() == [3.0]
    with pytest.raises(TextrnnError, match="is not UTF-8 text"):
        (tmp_path / "latin.csv").write_bytes("time,load\n2021-01-01 00:00,1\xe9\n".encode("latin-1"))
        read_table(tmp_path / "latin.csv", "time", ["load"])


def test_parquet_files_read_like_csv(tmp_path):
    pytest.importorskip("pyarrow")
    stamps = pd.date_range("2021-03-13", periods=48, freq="h")
    frame = pd.DataFrame({"time": stamps, "load": np.arange(48.0), "other": ["x"] * 48})
    expected = stamps.to_numpy().astype("datetime64[s]").tolist()
    frame.to_parquet(tmp_path / "naive.parquet")
    table = read_table(tmp_path / "naive.parquet", "time", ["load"])
    assert table.times.tolist() == expected and table.columns["load"].tolist() == list(range(48)) and table.rows == 48
    # Time-zone-aware timestamps are converted to UTC; times stored as text are parsed like CSV cells;
    # a Parquet file is recognised by its content whatever its name.
    aware = frame.assign(time=stamps.tz_localize("UTC").tz_convert("Europe/Berlin"))
    aware.to_parquet(tmp_path / "aware.pq")
    assert read_table(tmp_path / "aware.pq", "time", ["load"]).times.tolist() == expected
    text = frame.assign(time=stamps.strftime("%d.%m.%Y %H:%M"), load=pd.array([1, None] * 24, dtype="Int64"))
    text.to_parquet(tmp_path / "text.csv")
    table = read_table(tmp_path / "text.csv", "time", ["load"])
    assert table.times.tolist() == expected and table.time_format == "%d.%m.%Y %H:%M"
    assert np.isnan(table.columns["load"][1::2]).all() and (table.columns["load"][::2] == 1).all()
    frame.assign(load=["1", "NA"] * 24).to_parquet(tmp_path / "strings.parquet")
    assert np.isnan(read_table(tmp_path / "strings.parquet", "time", ["load"]).columns["load"][1])


def test_bad_parquet_files_are_one_clear_error(tmp_path):
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"time": pd.date_range("2021-01-01", periods=4, freq="h"), "load": [1.0, 2, 3, 4]})
    frame.to_parquet(tmp_path / "series.parquet")
    with pytest.raises(TextrnnError, match="series.parquet has no column 'Datetime'; its columns are time, load"):
        read_table(tmp_path / "series.parquet", "Datetime", ["load"])
    frame.assign(time=np.arange(4)).to_parquet(tmp_path / "numbers.parquet")
    with pytest.raises(TextrnnError, match="column 'time' holds numbers, not times"):
        read_table(tmp_path / "numbers.parquet", "time", ["load"])
    frame.assign(load=["1", "2", "many", "4"]).to_parquet(tmp_path / "words.parquet")
    with pytest.raises(TextrnnError, match="column 'load' is not numeric: row 4 holds 'many'"):
        read_table(tmp_path / "words.parquet", "time", ["load"])
    frame.head(0).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(TextrnnError, match="has a header but no rows"):
        read_table(tmp_path / "empty.parquet", "time", ["load"])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(TextrnnError, match="broken.parquet is not a readable Parquet file"):
        read_table(tmp_path / "broken.parquet", "time", ["load"])


def test_a_pjm_data_miner_file_reads_with_no_flag(tmp_path):
    utc = read_table(PJM, "datetime_beginning_utc", ["mw"])
    assert utc.time_format == "%m/%d/%Y %I:%M:%S %p" and utc.times[0] == np.datetime64("2017-11-04T04:00")
    series = clean(utc.times, utc.columns["mw"], "mw", max_gap=6)
    assert describe(series.report) == "72 rows, step 1 hour, 1 segment, 72 points"
    # Eastern Prevailing Time: 1 AM twice on 5 November 2017, averaged.
    local = read_table(PJM, "datetime_beginning_ept", ["mw"])
    series = clean(local.times, local.columns["mw"], "mw", max_gap=6)
    assert describe(series.report) == "72 rows, step 1 hour, 1 duplicated times averaged, 1 segment, 71 points"
    assert series.values[series.times.tolist().index(np.datetime64("2017-11-05T01:00"))] == (10596 + 10446) / 2
    # The same hours as ISO 8601 with their offsets (-04:00, then -05:00) read to the UTC series.
    stamps = pd.DatetimeIndex(utc.times).tz_localize("UTC").tz_convert("America/New_York")
    lines = "".join(f"{t.isoformat()},{value:.3f}\n" for t, value in zip(stamps, utc.columns["mw"]))
    path = write(tmp_path, "datetime_beginning_ept,mw\n" + lines, "pjm_iso.csv")
    table = read_table(path, "datetime_beginning_ept", ["mw"])
    assert table.times.tolist() == utc.times.tolist() and table.columns["mw"].tolist() == utc.columns["mw"].tolist()


@pytest.mark.skipif(not AEP.is_file(), reason="the shared AEP_hourly.csv is not available")
def test_the_aep_file_reads_to_the_same_series_as_before():
    table = read_table(AEP, "Datetime", ["AEP_MW"])
    series = clean(table.times, table.columns["AEP_MW"], "AEP_MW", max_gap=6)
    assert describe(series.report) == (
        "121,273 rows, step 1 hour, 4 duplicated times averaged, 27 missing times, 27 points interpolated, "
        "1 segment, 121,296 points"
    )
    # Checksums of the series the hand-written reader produced: the same times and bit-identical values.
    assert hashlib.sha256(series.values.tobytes()).hexdigest()[:16] == "c943b6f865e31dfa"
    assert hashlib.sha256(series.times.astype(np.int64).tobytes()).hexdigest()[:16] == "3f3bfc203c8a8b50"


# ----------------------------------------------------------------------------- cleaning


def test_rows_are_sorted_and_duplicated_times_averaged():
    series = clean(
        times("2020-01-01T02:00", "2020-01-01T00:00", "2020-01-01T01:00", "2020-01-01T01:00"),
        np.array([3.0, 1.0, 2.0, 4.0]),
        "load",
        max_gap=2,
    )
    assert series.values.tolist() == [1.0, 3.0, 3.0]
    assert series.report["unsorted"] and series.report["duplicated_times"] == 1
    assert series.times.tolist() == hourly(3).tolist()


def test_daylight_saving_changes_in_local_time_are_repaired():
    # Spring forward: 02:00 never happens; autumn: 01:00 happens twice (two readings).
    spring = times("2021-03-14T00:00", "2021-03-14T01:00", "2021-03-14T03:00", "2021-03-14T04:00")
    autumn = times("2021-11-07T00:00", "2021-11-07T01:00", "2021-11-07T01:00", "2021-11-07T02:00")
    series = clean(spring, np.array([10.0, 12.0, 16.0, 18.0]), "load", max_gap=1)
    assert series.values.tolist() == [10.0, 12.0, 14.0, 16.0, 18.0]  # the missing hour, interpolated in time
    assert series.report["missing_times"] == 1 and series.report["filled"] == 1 and len(series.segments) == 1
    series = clean(autumn, np.array([10.0, 11.0, 13.0, 14.0]), "load", max_gap=1)
    assert series.values.tolist() == [10.0, 12.0, 14.0]
    assert series.report["duplicated_times"] == 1


def test_long_gaps_split_the_series_and_missing_values_are_filled():
    stamps = np.concatenate([hourly(5), hourly(5, "2020-01-02T00:00")])  # 19 missing hours between
    values = np.array([1.0, np.nan, 3.0, np.nan, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    series = clean(stamps, values, "load", max_gap=3)
    assert series.segments == [(0, 5), (5, 10)]
    assert series.values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert series.report["filled"] == 2 and series.report["left_out"] == 19
    # A run of missing values longer than max_gap splits too; nothing is invented there.
    values = np.array([1.0, 2.0, np.nan, np.nan, np.nan, 6.0, 7.0])
    series = clean(hourly(7), values, "load", max_gap=2)
    assert series.segments == [(0, 2), (2, 4)] and series.values.tolist() == [1.0, 2.0, 6.0, 7.0]


def test_impossible_series_are_refused_clearly():
    with pytest.raises(TextrnnError, match="every cell is missing"):
        clean(hourly(4), np.full(4, np.nan), "load", max_gap=2)
    with pytest.raises(TextrnnError, match="single time"):
        clean(times("2020-01-01", "2020-01-01"), np.array([1.0, 2.0]), "load", max_gap=2)
    with pytest.raises(TextrnnError, match="not on a regular grid"):
        clean(times("2020-01-01T00:00", "2020-01-01T01:00", "2020-01-01T02:00", "2020-01-01T02:30"), np.ones(4), "x", 2)


def test_a_gap_of_centuries_is_split_without_laying_it_out():
    second = np.timedelta64(1, "s")
    stamps = np.concatenate(
        [
            np.datetime64("1900-01-01T00:00:00") + second * np.arange(10),
            np.datetime64("2100-01-01") + second * np.arange(10),
        ]
    )
    series = clean(stamps, np.arange(20.0), "load", max_gap=6)
    assert series.segments == [(0, 10), (10, 20)] and series.report["left_out"] > 6e9


# ----------------------------------------------------------------------------- features and scaling


def test_calendar_features_of_a_known_time():
    # 2004-10-01 01:00 was a Friday (weekday 4), month 10 (index 9), day 275 of a leap year (index 274).
    linear = calendar_features(times("2004-10-01T01:00"), "linear")[0]
    assert np.allclose(linear, [1 / 23, 4 / 6, 9 / 11, 274 / 365])
    cyclical = calendar_features(times("2004-10-01T06:00"), "cyclical")[0]
    assert cyclical.shape == (8,) and np.allclose(cyclical[:2], [1.0, 0.0], atol=1e-6)  # 6 h: a quarter day
    assert calendar_features(times("2004-10-01"), "none").shape == (1, 0)


def test_scalers_are_fitted_on_the_training_part_only():
    values = np.concatenate([np.linspace(0.0, 10.0, 80), np.full(20, 1000.0)])  # huge values after training
    series = clean(hourly(100), values, "load", max_gap=2)
    dataset = build_dataset([series], 4, 1, "none", 0.1, 0.1, season=1)
    train_end, _ = split_points(100, 0.1, 0.1)
    assert dataset.scalers == [Scaler(0.0, float(values[:train_end].max()))]
    assert dataset.values[:train_end].max() == pytest.approx(1.0)
    constant = Scaler.fit(np.full(5, 7.0))
    assert constant.transform(np.array([7.0])) == 0.0 and constant.inverse(np.array([0.0])) == 7.0


# ----------------------------------------------------------------------------- windows


def test_windows_read_the_right_points_and_never_cross_a_segment():
    stamps = np.concatenate([hourly(30), hourly(20, "2020-01-03T00:00")])
    series = clean(stamps, np.arange(50, dtype=float), "load", max_gap=2)
    dataset = build_dataset([series], 5, 2, "linear", 0.1, 0.1, season=3)
    for split, starts in dataset.starts.items():
        inputs, targets = window_indices(starts, 5, 2)
        # Values are 0..49 in order, so a window's raw inputs and targets are consecutive numbers.
        assert (np.diff(dataset.raw[np.concatenate([inputs, targets], axis=1)], axis=1) == 1).all(), split
        assert dataset.features.shape == (50, 5)
    test_targets = window_indices(dataset.starts["test"], 5, 2)[1]
    _, test_start = split_points(50, 0.1, 0.1)
    assert test_targets.min() == test_start and test_targets.max() == 49
    # Horizon 1: every point after the first lookback of each segment is a target of exactly one split.
    dataset = build_dataset([series], 5, 1, "none", 0.1, 0.1, season=1)
    targets = np.concatenate([window_indices(s, 5, 1)[1].ravel() for s in dataset.starts.values()])
    assert sorted(targets.tolist()) == [*range(5, 30), *range(35, 50)]


def test_lazy_windows_agree_between_numpy_and_torch():
    torch = pytest.importorskip("torch")
    starts = np.array([0, 7, 11])
    numpy_inputs, numpy_targets = window_indices(starts, 4, 3)
    torch_inputs, torch_targets = window_indices(torch.from_numpy(starts), 4, 3, xp=torch)
    assert torch_inputs.tolist() == numpy_inputs.tolist() and torch_targets.tolist() == numpy_targets.tolist()


def test_a_series_too_short_for_a_window_is_refused():
    series = clean(hourly(20), np.arange(20, dtype=float), "load", max_gap=2)
    with pytest.raises(TextrnnError, match="too short.*--lookback"):
        build_dataset([series], 30, 1, "none", 0.1, 0.1, season=1)


# ----------------------------------------------------------------------------- metrics and baselines


def test_metrics_match_hand_computed_values():
    result = metrics(np.array([100.0, 200.0, 0.0]), np.array([110.0, 180.0, 0.0]))
    assert result["mae"] == pytest.approx(10.0)
    assert result["rmse"] == pytest.approx(math.sqrt(500 / 3))
    assert result["mape"] == pytest.approx(10.0)  # the zero target is left out
    assert result["smape"] == pytest.approx(100 * (20 / 210 + 40 / 380 + 0) / 3)
    # The seed divided by (y + yhat) and then by 2: a quarter of the standard figure.
    y, yhat = np.array([100.0, 200.0]), np.array([110.0, 180.0])
    assert np.mean(np.abs(y - yhat) / (y + yhat) / 2) * 100 == pytest.approx(metrics(y, yhat)["smape"] / 4)
    assert metrics(np.zeros(2), np.ones(2))["mape"] is None


def test_baselines_repeat_the_last_value_and_the_last_season():
    values = np.arange(20, dtype=float)
    forecasts = baseline_forecasts(values, np.array([0, 5]), lookback=6, horizon=4, season=3)
    assert forecasts["persistence"].tolist() == [[5.0] * 4, [10.0] * 4]
    # Targets 6..9 from start 0: one season back is 3, 4, 5; the fourth step goes back two seasons to 3.
    assert forecasts["seasonal_naive"].tolist() == [[3.0, 4.0, 5.0, 3.0], [8.0, 9.0, 10.0, 8.0]]


def test_a_coarser_file_is_refused_for_a_model_of_a_finer_step():
    two_hourly = np.datetime64("2020-01-01T00:00", "s") + np.timedelta64(7200, "s") * np.arange(10)
    with pytest.raises(TextrnnError, match="step of 2 hours, but the model was trained on a step of 1 hour"):
        clean(two_hourly, np.arange(10.0), "load", max_gap=6, step_seconds=3600)


def test_a_series_without_test_windows_is_named():
    long = clean(hourly(200), np.arange(200.0), "long", max_gap=2)
    # The short series' test part falls after a long gap, in a segment too short for one window.
    stamps = np.concatenate([hourly(90), hourly(12, "2020-02-01T00:00")])
    short = clean(stamps, np.arange(102.0), "short", max_gap=2)
    with pytest.raises(TextrnnError, match="series 'short' has no test window"):
        build_dataset([long, short], 24, 1, "none", 0.1, 0.1, season=1)
