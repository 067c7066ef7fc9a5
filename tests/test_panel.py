"""Panels of many series (the M4 wide format, long tables) and textrnn forecast m4 end to end on a small one."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from textrnn.cli import cli
from textrnn.config import ForecastConfig, PanelConfig
from textrnn.errors import TextrnnError
from textrnn.forecast.global_model import (
    PanelForecaster,
    PanelTask,
    forecast_panel,
    last_windows,
    level_of,
    seasonal_positions,
)
from textrnn.timeseries.panel import of_series, read_long, read_m4, split_last, subset

HORIZON = 48
TINY_M4 = [
    "--lookback", "48", "--hidden-size", "8", "--batch-size", "32", "--windows-per-series", "8",
    "--max-steps", "6", "--eval-every", "3", "--warmup-steps", "0", "--device", "cpu",
]  # fmt: skip


def write_m4(path, lengths=(200, 260, 230), horizon=HORIZON, test_path=None, seed=0):
    """Daily-periodic series in the M4 wide format (padded rows), and their next ``horizon`` values in ``test_path``."""
    random = np.random.default_rng(seed)
    rows, tests = [], []
    for number, length in enumerate(lengths):
        steps = np.arange(length + horizon)
        values = 100 * (number + 1) * (1 + 0.3 * np.sin(2 * np.pi * (steps + 3 * number) / 24))
        values += random.normal(0, 2, len(steps))
        rows.append([f"H{number + 1}", *(f"{value:.2f}" for value in values[:length])])
        tests.append([f"H{number + 1}", *(f"{value:.2f}" for value in values[length:])])
    width = max(len(row) for row in rows)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        writer.writerow([f"V{column + 1}" for column in range(width)])
        writer.writerows(row + [""] * (width - len(row)) for row in rows)
    if test_path is not None:
        with open(test_path, "w", newline="") as handle:
            writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
            writer.writerow([f"V{column + 1}" for column in range(horizon + 1)])
            writer.writerows(tests)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def test_the_m4_format_keeps_each_series_length(tmp_path):
    path = tmp_path / "m4.csv"
    path.write_text('"V1","V2","V3","V4"\n"A","1","2","3"\n"B","4","",""\n"C","5","6",""\n')
    panel = read_m4(path)
    assert panel.ids == ["A", "B", "C"]
    assert panel.lengths.tolist() == [3, 1, 2]
    assert panel.series(2).tolist() == [5.0, 6.0]
    head, tail = split_last(subset(panel, np.array([0, 2])), 1)
    assert head.lengths.tolist() == [2, 1] and tail[:, 0].tolist() == [3.0, 6.0]
    assert head.series(1).tolist() == [5.0]
    with pytest.raises(TextrnnError, match="not longer than the 1 values held out"):
        split_last(panel, 1)
    assert last_windows(panel, 2).tolist() == [[2.0, 3.0], [4.0, 4.0], [5.0, 6.0]]  # B padded with its first value


@pytest.mark.parametrize(
    "text, message",
    [
        ('"V1","V2","V3"\n"A","1",""\n"A","2","3"\n', "names two series"),
        ('"V1","V2","V3"\n"A","","1"\n', "missing value before its last"),
        ('"V1","V2","V3"\n"A","1","x"\n', "not numeric"),
        ('"V1","V2"\n"A",""\n', "has no values"),
        ("", "empty"),
    ],
)
def test_broken_m4_files_get_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TextrnnError, match=message):
        read_m4(path)


def test_long_tables_give_each_series_its_start_length_and_gaps(tmp_path):
    path = tmp_path / "long.csv"
    rows = [("b", 5, 10.0), ("a", 1, 1.0), ("a", 2, 2.0), ("b", 3, 6.0), ("a", 4, 4.0), ("c", 2, "")]
    path.write_text("id,t,y\n" + "".join(f"{name},{time},{value}\n" for name, time, value in rows))
    panel = read_long(path, "id", "t", "y")
    assert panel.ids == ["b", "a"]  # in order of appearance; c has no values
    assert panel.series(0).tolist() == [6.0, 8.0, 10.0]  # times 3, (4), 5
    assert panel.series(1).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert panel.filled == 2


def test_long_tables_read_timestamps_and_refuse_duplicates(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("id,time,y\nx,2020-01-01 00:00,1\nx,2020-01-01 02:00,3\nx,2020-01-01 03:00,4\n")
    assert read_long(path, "id", "time", "y").series(0).tolist() == [1.0, 2.0, 3.0, 4.0]
    path.write_text("id,time,y\nx,1,1\nx,1,2\n")
    with pytest.raises(TextrnnError, match="two values at one time"):
        read_long(path, "id", "time", "y")
    with pytest.raises(TextrnnError, match="no column 'value'"):
        read_long(path, "id", "time", "value")


def test_forecast_m4_validates_forecasts_and_scores_a_test_file(tmp_path):
    train = write_m4(tmp_path / "train.csv", test_path=tmp_path / "test.csv")
    result = run("forecast", "m4", "--train", train, "--test", tmp_path / "test.csv", *TINY_M4, "--out", tmp_path / "run",
                 "--forecasts", tmp_path / "f.csv", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("smape", "mase", "owa", "baselines", "per_step_smape", "series", "elapsed_sec", "checkpoint", "test"):
        assert key in report
    assert set(report["baselines"]) == {"naive2", "seasonal_naive"}
    assert report["baselines"]["naive2"]["owa"] == pytest.approx(1.0)
    assert len(report["per_step_smape"]) == HORIZON and report["series"] == 3
    assert set(report["test"]) == {"smape", "mase", "owa", "baselines", "per_step_smape"}
    with open(tmp_path / "f.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", *(f"F{step}" for step in range(1, HORIZON + 1))]
    assert [row[0] for row in rows[1:]] == ["H1", "H2", "H3"]
    assert all(np.isfinite(np.array(row[1:], dtype=float)).all() for row in rows[1:])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["series"] == 3


def test_forecast_m4_skips_short_series_in_one_line(tmp_path):
    train = write_m4(tmp_path / "train.csv", lengths=(200, 100, 90, 240))
    result = CliRunner().invoke(cli, ["forecast", "m4", "--train", str(train), *TINY_M4, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipping")]
    assert lines == ["skipping 2 of 4 series shorter than 192 values (--lookback + 3 x --horizon): H2, H3"]
    assert [row.split(",")[0] for row in (tmp_path / "r" / "forecasts.csv").read_text().splitlines()[1:]] == [
        "H1",
        "H4",
    ]


def test_forecast_m4_reads_long_tables(tmp_path):
    path = tmp_path / "long.csv"
    steps = np.arange(240)
    with open(path, "w") as handle:
        handle.write("store,hour,sales\n")
        for name, shift in (("s1", 0), ("s2", 5)):
            for step in steps[shift:]:
                handle.write(f"{name},{step},{100 + 10 * np.sin(2 * np.pi * step / 24):.3f}\n")
    result = run("forecast", "m4", "--format", "long", "--csv", path, "--id-col", "store", "--time-col", "hour",
                 "--target", "sales", *TINY_M4, "--out", tmp_path / "r", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["series"] == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--train", "missing.csv"], "missing.csv does not exist"),
        ([], "no data: give --train FILE"),
        (["--train", "{train}", "--format", "long"], "--format long needs --id-col, --time-col, --target"),
        (["--train", "{train}", "--test", "{short}"], "fewer than 48 values"),
        (["--train", "{train}", "--lookback", "400"], "no series of"),
        (["--train", "{train}", "--windows-per-series", "0"], "--windows-per-series must be in"),
    ],
)
def test_forecast_m4_refuses_bad_input_in_one_line(tmp_path, arguments, message):
    train = write_m4(tmp_path / "train.csv")
    short = tmp_path / "short.csv"
    short.write_text('"V1","V2"\n"H1","1"\n"H2","1"\n"H3","1"\n')
    arguments = [item.format(train=train, short=short) for item in arguments]
    result = CliRunner().invoke(cli, ["forecast", "m4", *TINY_M4, *arguments, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def tiny_task(lengths=(100, 400), windows=5):
    panel = of_series([f"s{n}" for n in range(len(lengths))], [np.arange(n, dtype=float) + 1 for n in lengths])
    config = ForecastConfig(lookback=24, horizon=4, season=24, hidden_size=8, batch_size=3, residual=False,
                            forking=False, loss="l1", max_steps=1, device="cpu")  # fmt: skip
    panel_config = PanelConfig(train="x", windows_per_series=windows)
    validation = (last_windows(panel, 24), np.ones((len(lengths), 4)))
    return PanelTask(config, panel_config, panel, validation, torch.device("cpu")), panel


def test_every_series_gets_the_same_windows_an_epoch_whatever_its_length():
    task, panel = tiny_task()
    starts, series = (torch.cat(parts) for parts in zip(*task.batches(epoch=0, start=0)))
    assert torch.bincount(series).tolist() == [5, 5]
    for number in (0, 1):  # every window lies inside its series
        mine = starts[series == number]
        assert (mine >= panel.offsets[number]).all() and (mine + 28 <= panel.offsets[number + 1]).all()
    again = torch.cat([batch[0] for batch in task.batches(epoch=0, start=0)])
    assert torch.equal(again, starts)  # the same epoch, the same windows
    assert not torch.equal(torch.cat([batch[0] for batch in task.batches(epoch=1, start=0)]), starts)


def test_windows_are_divided_by_the_level_of_their_last_season():
    window = torch.tensor([[1.0] * 24 + [3.0] * 24])
    assert level_of(window, 24).item() == 3.0
    assert level_of(torch.zeros(1, 5), 2).item() == 1.0  # a level of 0 divides by 1
    task, panel = tiny_task()
    model = task.build_model()
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)
    forecasts = forecast_panel(model, last_windows(panel, 24), 24)  # the model says "the level": a flat line
    assert forecasts[1] == pytest.approx(np.full(4, np.mean(np.arange(377, 401))))


def test_an_ensemble_trains_each_seed_and_forecasts_their_median(tmp_path):
    train = write_m4(tmp_path / "train.csv")
    result = run("forecast", "m4", "--train", train, *TINY_M4, "--ensemble", "2", "--out", tmp_path / "r", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["checkpoint"] == str(tmp_path / "r")
    for stage in ("validation", "final"):
        for number in (1, 2):
            seed = json.loads((tmp_path / "r" / f"{stage}-{number}" / "config.json").read_text())["forecast"]["seed"]
            assert seed == number - 1


def test_the_seasonal_residual_starts_from_the_seasonal_naive_forecast():
    task, panel = tiny_task()
    config = task.config
    model = PanelForecaster(config, len(panel), seasonal=True)
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)
    window = torch.arange(24.0)[None, :]
    assert model(window, torch.tensor([0])).tolist() == [[0.0, 1.0, 2.0, 3.0]]  # a 24-step season, horizon 4
    assert seasonal_positions(5, 5, 2).tolist() == [3, 4, 3, 4, 3]
