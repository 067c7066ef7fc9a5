"""``textrnn forecast m4``: a global model on a panel of series, validated, scored and written the M4 way."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from textrnn.checkpoint import json_safe, write_json
from textrnn.cli.common import command, given, set_threads
from textrnn.cli.options import FORECAST, FORECAST_WORDS, MODEL, OPTIMIZATION, some_options, training_options
from textrnn.cli.progress import ProgressPrinter
from textrnn.config import LIMITS, PANEL_DEFAULTS, PANEL_FORMATS, ForecastConfig, PanelConfig
from textrnn.errors import TextrnnError
from textrnn.tables import columns, number

_JSON_KEYS = ("smape", "mase", "owa", "baselines", "per_step_smape", "series", "elapsed_sec", "checkpoint", "test")
_SHOWN = {**PANEL_DEFAULTS, "epochs": "none: the command stops near --max-seconds", "max_seconds": "300"}
_MODEL_FLAGS = ("--lookback", "--horizon", "--season", "--loss")


def _configs(values: dict) -> tuple[PanelConfig, ForecastConfig]:
    panel = PanelConfig(**given(values, PanelConfig))
    chosen = given({key: item for key, item in values.items() if key not in ("time_col", "target")}, ForecastConfig)
    defaults = dict(PANEL_DEFAULTS)
    if any(chosen.get(limit) is not None for limit in LIMITS):  # any limit given replaces the default budget
        defaults.pop("max_seconds")
    names = {"csv": (panel.train,), "target": (panel.target or "value",), "time_col": panel.time_col or "time"}
    return panel, ForecastConfig(**{**defaults, **chosen, **names})


def _table(report: dict) -> str:
    lines = [("forecast", "sMAPE", "MASE", "OWA")]
    rows = [("model", report), *((name.replace("_", " "), scores) for name, scores in report["baselines"].items())]
    for label, scores in rows:
        lines.append((label, f"{number(scores['smape'])}%", number(scores["mase"]), number(scores["owa"])))
    return columns(lines)


def _forecasts_csv(ids: list[str], forecasts) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", *(f"F{step + 1}" for step in range(forecasts.shape[1]))])
    for name, row in zip(ids, forecasts.tolist()):
        writer.writerow([name, *(repr(round(value, 6)) for value in row)])
    return text.getvalue().encode()


def _progress():
    printer = ProgressPrinter()

    def progress(event: str, info: dict) -> None:
        if event == "end":
            printer.close()
        else:
            printer(event, info)

    return progress


@click.command("m4")
@training_options((ForecastConfig,), FORECAST_WORDS, MODEL, OPTIMIZATION, overrides=_SHOWN)
@some_options((ForecastConfig,), FORECAST_WORDS, FORECAST, _MODEL_FLAGS, overrides=_SHOWN)
@click.option(
    "--train",
    "--csv",
    "train",
    type=click.Path(path_type=Path),
    help="The panel to train on (and validate on its end).",
)
@click.option(
    "--test",
    type=click.Path(path_type=Path),
    help="The --horizon values after each series' end, in the same format: scored.",
)
@click.option(
    "--format",
    "format",
    type=click.Choice(PANEL_FORMATS),
    help="m4: one series a row (id, then values, padded at the end); long: one value a row.  [default: m4]",
)
@click.option("--id-col", help="With --format long: the column of the series id.")
@click.option("--time-col", help="With --format long: the column of the time (step numbers or timestamps).")
@click.option("--target", help="With --format long: the column of the values.")
@click.option(
    "--windows-per-series",
    type=int,
    help="Windows drawn from every series in an epoch (long series do not dominate).  [default: 64]",
)
@click.option(
    "--level-window",
    type=int,
    help="Each window and its targets are divided by the mean of its last this many values.  [default: --season]",
)
@click.option(
    "--id-embedding",
    type=int,
    help="Width of a learned embedding of the series id read at every step (0: none).  [default: 0]",
)
@click.option(
    "--patch",
    type=int,
    help="Values the encoder reads at each of its steps: 24 reads hourly data a day a step (24 times fewer "
    "recurrent steps).  [default: 1]",
)
@click.option(
    "--ensemble",
    type=int,
    help="Train this many models (seeds --seed, --seed + 1, ...; each an equal share of the budget) and forecast "
    "their median.  [default: 1]",
)
@click.option(
    "--seasonal-residual/--level-residual",
    default=None,
    help="The head corrects the seasonal naive forecast of each window (its last --season values repeated), or "
    "the window's level.  [default: level]",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the two runs (validation/, final/).  [default: checkpoints/forecast-m4-<date-time>]",
)
@click.option(
    "--forecasts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The forecasts past each series' end, as id,F1,...,Fh.  [default: OUT/forecasts.csv]",
)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def m4_command(out, forecasts, threads, json_output, **values):
    """Train one global model on every series of a panel: score it on the last --horizon values of each series next
    to Naive2 and the seasonal naive forecast (sMAPE, MASE, OWA), then retrain on everything and forecast past the
    ends. With --max-seconds, the whole command ends within it plus a few seconds: half of it validates."""
    started = time.perf_counter()
    from textrnn.atomic import atomic_write
    from textrnn.cli.common import stop_on_signals
    from textrnn.forecast.m4 import run_m4

    panel_config, config = _configs(values)
    set_threads(threads)
    out = out or Path("checkpoints") / f"forecast-m4-{datetime.now():%Y%m%d-%H%M%S}"
    forecasts = forecasts or out / "forecasts.csv"
    with stop_on_signals() as should_stop:
        result = run_m4(panel_config, config, out, callback=_progress(), should_stop=should_stop, started=started)
    if result["interrupted"]:
        click.echo(f"interrupted: the runs so far are in {out}", err=True)
        sys.exit(130)
    try:
        atomic_write(forecasts, _forecasts_csv(result["ids"], result["forecasts"]))
    except OSError as error:
        raise TextrnnError(f"could not write {forecasts} ({error.strerror or error})") from None
    result["elapsed_sec"] = time.perf_counter() - started
    public = json_safe({key: result[key] for key in _JSON_KEYS if key in result})
    write_json(out / "results.json", {**public, "skipped": result["skipped"], "forecasts": str(forecasts)})
    if json_output:
        click.echo(json.dumps(public, allow_nan=False))
        return
    click.echo(f"validation: the last {config.horizon} values of {result['series']:,} series\n{_table(result)}")
    if "test" in result:
        click.echo(f"test: {panel_config.test}\n{_table(result['test'])}")
    click.echo(f"forecasts in {forecasts}; runs in {out}; {result['elapsed_sec']:.0f} s")
