"""``textrnn forecast train|eval|predict|compare``: thin click commands over ``textrnn.forecast``."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import click
import numpy as np

from textrnn.checkpoint import json_safe
from textrnn.cli.common import (
    command,
    given,
    parse_cells,
    run_with_progress,
    set_threads,
    warn_ignored_on_resume,
)
from textrnn.cli.options import FORECAST, FORECAST_WORDS, MODEL, OPTIMIZATION, training_options
from textrnn.cli.progress import ProgressPrinter
from textrnn.config import (
    DEVICES,
    ForecastConfig,
)
from textrnn.errors import TextrnnError
from textrnn.tables import columns, number
from textrnn.timeseries.read import format_times

_JSON_KEYS = (
    "test",
    "overall",
    "baselines",
    "baselines_overall",
    "intervals",  # with --quantiles
    "intervals_overall",
    "elapsed_sec",
    "checkpoint",
)
_training_options = functools.partial(training_options, (ForecastConfig,), FORECAST_WORDS)


def _split_list(values) -> tuple[str, ...]:
    """Repeated and comma-separated values alike: ('a,b', 'c') -> ('a', 'b', 'c')."""
    if isinstance(values, str):
        values = (values,)
    return tuple(part.strip() for value in values or () for part in str(value).split(",") if part.strip())


def _config(options: dict, cell: str | None = None) -> ForecastConfig:
    options = dict(options)
    options["csv"] = tuple(str(path) for path in (options.get("csv") or ()))
    options["target"] = _split_list(options.get("target"))
    for key in ("covariates", "future_covariates"):
        options[key] = _split_list(options.get(key)) or None
    if cell is not None:
        options["cell"] = cell
    values = given(options, ForecastConfig)
    for key in ("csv", "target"):
        if not values.get(key):
            values.pop(key, None)
    config = ForecastConfig(**values)
    if not config.csv:
        raise TextrnnError("no data: give --csv FILE (several allowed), e.g. --csv AEP_hourly.csv --target AEP_MW")
    if not config.target:
        raise TextrnnError("no target: give --target COLUMN (several allowed), e.g. --target AEP_MW")
    return config


def _run_with_progress(config: ForecastConfig, out: Path, resume: bool = False, tensorboard: Path | None = None):
    from textrnn.forecast.task import train_forecaster

    return run_with_progress(train_forecaster, tensorboard, config=config, out_dir=out, resume=resume)


def _percent(value) -> str:
    return "n/a" if value is None else f"{number(value)}%"


def _score_table(results: dict) -> str:
    """Per series: the model, then the baselines on the same forecasts; then all series together."""
    methods = [("model", results["test"], results["overall"])] + [
        (name.replace("_", " "), per_series, results["baselines_overall"][name])
        for name, per_series in results["baselines"].items()
    ]
    lines = [("series", "forecast", "sMAPE", "MAPE", "MAE", "RMSE", "points")]
    names = list(results["test"])
    groups = [(name, [(label, per_series[name]) for label, per_series, _ in methods]) for name in names]
    if len(names) > 1:
        groups.append(("all series", [(label, overall) for label, _, overall in methods]))
    for name, rows in groups:
        for position, (label, scores) in enumerate(rows):
            lines.append(
                (
                    name if position == 0 else "",
                    label,
                    _percent(scores["smape"]),
                    _percent(scores["mape"]),
                    number(scores["mae"], 1),
                    number(scores["rmse"], 1),
                    f"{scores['points']:,}",
                )
            )
    return columns(lines)


def _interval_table(results: dict) -> str:
    """With --quantiles: per series, each central interval's coverage, width and interval score, and the pinball loss."""
    lines = [("series", "interval", "coverage", "mean width", "interval score", "pinball")]
    groups = list(results["intervals"].items())
    if len(groups) > 1:
        groups.append(("all series", results["intervals_overall"]))
    for name, scores in groups:
        for position, key in enumerate(scores["coverage"]):
            lines.append(
                (
                    name if position == 0 else "",
                    key,
                    f"{100 * scores['coverage'][key]:.1f}%",
                    number(scores["width"][key], 1),
                    number(scores["interval_score"][key], 1),
                    number(scores["pinball"], 2) if position == 0 else "",
                )
            )
    return columns(lines)


def _json(results: dict, extra: tuple[str, ...] = ()) -> str:
    keys = (*_JSON_KEYS, *extra)
    return json.dumps(json_safe({key: results[key] for key in keys if key in results}), allow_nan=False)


@click.group()
def forecast() -> None:
    """Forecast time series from CSV files with the same recurrent cells: train, eval, predict, compare."""


@forecast.command("train")
@_training_options(FORECAST, MODEL, OPTIMIZATION)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory.  [default: checkpoints/forecast-<cell>-<date-time>]",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out (default: the newest forecasting run).")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG of test forecasts vs actual."
)
@click.option(
    "--tensorboard",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also log the curves (validation sMAPE and MAE, loss, lr, gradient norm, windows/s) to TensorBoard here.",
)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON summary on stdout.")
@command
def train_command(out, resume, plot, tensorboard, threads, json_output, **options):
    """Train a forecaster on CSV series, then score it on the test part next to the baselines."""
    from textrnn.checkpoint import newest_run, read_config
    from textrnn.config import from_dict
    from textrnn.train.state import resumed_config

    if plot is not None:
        from textrnn.plots import require_matplotlib

        require_matplotlib()
    set_threads(threads)
    if resume:
        out = out or newest_run(task="forecast")
        stored = from_dict(ForecastConfig, read_config(Path(out), task="forecast")["forecast"])
        warn_ignored_on_resume(options)
        config = resumed_config(stored, options)
    else:
        config = _config(options)
    out = out or Path("checkpoints") / f"forecast-{config.cell}-{datetime.now():%Y%m%d-%H%M%S}"
    if tensorboard is not None:
        from textrnn.train.tensorboard import require_tensorboard

        require_tensorboard()  # before training, not after
    summary = _run_with_progress(config, out, resume=resume, tensorboard=tensorboard)
    if os.environ.get("RANK", "0") != "0":  # under torchrun the first process reports for all
        sys.exit(130 if summary["interrupted"] else 0)
    if summary["skipped_steps"]:
        click.echo(
            f"warning: {summary['skipped_steps']} steps were skipped for a non-finite loss or gradient", err=True
        )
    if plot is not None:
        from textrnn.forecast.panels import test_panels
        from textrnn.plots import plot_panels

        plot_panels(plot, test_panels(summary["dataset"], summary["arrays"]), f"test forecasts, {out}")
    if json_output:
        click.echo(
            _json(
                summary, ("best_val_smape", "steps", "train_seconds", "windows_per_sec", "parameters", "stopped_early")
            )
        )
    else:
        why = (
            "interrupted"
            if summary["interrupted"]
            else "stopped early"
            if summary["stopped_early"]
            else "stopped at its limit"
        )
        click.echo(
            f"{summary['steps']:,} steps ({summary['epochs']:.1f} epochs) in {summary['train_seconds']:.0f} s of training, "
            f"{why}; best validation sMAPE {number(summary['best_val_smape'])}% at step {summary['best_step']:,}\n"
            f"test part, {config.horizon} step{'s' if config.horizon > 1 else ''} ahead, best weights:\n"
            f"{_score_table(summary)}\nsaved in {summary['checkpoint']}" + (f"; plot in {plot}" if plot else "")
        )
        if "intervals" in summary:
            click.echo(f"prediction intervals on the test part:\n{_interval_table(summary)}")
    if summary["interrupted"]:
        click.echo(f"interrupted: continue with  textrnn forecast train --out {out} --resume", err=True)
        sys.exit(130)


def _run_options(function):
    """--checkpoint, --weights and --device of the commands that use a trained forecaster."""
    function = click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)(function)
    function = click.option(
        "--weights", type=click.Choice(["best", "last"]), help="Which weights of the run.  [default: best]"
    )(function)
    return click.option(
        "--checkpoint", type=click.Path(path_type=Path), help="Run directory.  [default: the newest forecasting run]"
    )(function)


@forecast.command("eval")
@_run_options
@click.option(
    "--csv",
    "csv_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Score every window of this file (same columns) with the stored scalers.  [default: the run's test part]",
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG of forecasts vs actual.")
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def eval_command(checkpoint, weights, csv_files, plot, device, json_output):
    """Score a trained forecaster next to the persistence and seasonal-naive baselines."""
    from textrnn.forecast.evaluate import evaluate_run
    from textrnn.forecast.panels import test_panels
    from textrnn.plots import plot_panels, require_matplotlib

    if plot is not None:
        require_matplotlib()
    results = evaluate_run(checkpoint, csv_files, weights, device)
    if plot is not None:
        plot_panels(plot, test_panels(results["dataset"], results["arrays"]), f"forecasts, {results['checkpoint']}")
    if json_output:
        click.echo(_json(results))
    else:
        source = (
            ", ".join(map(str, csv_files)) + " (every window)" if csv_files else "the test part of the training files"
        )
        click.echo(f"{source}, {results['checkpoint']} ({results['weights']} weights):\n{_score_table(results)}")
        if "intervals" in results:
            click.echo(f"prediction intervals:\n{_interval_table(results)}")


@forecast.command("predict")
@_run_options
@click.option(
    "--csv",
    "csv_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Forecast past the end of this file.  [default: the run's files]",
)
@click.option(
    "--steps", type=int, default=24, show_default=True, help="Steps to forecast (recursively past --horizon)."
)
@click.option(
    "--future-csv",
    "future_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="The known-ahead covariates of the steps to forecast (the time column and those columns); one file "
    "for all series, or one per --csv file.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="CSV file to write.  [default: stdout]")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG of the end of each series and its forecast.",
)
@command
def predict_command(checkpoint, weights, csv_files, future_files, steps, out, plot, device):
    """Forecast --steps past the end of each series, written as CSV: the time column, then one column per series."""
    from textrnn.forecast.panels import forecast_panels
    from textrnn.forecast.predict import predict_run
    from textrnn.plots import plot_panels, require_matplotlib

    if plot is not None:
        require_matplotlib()
    if steps < 1 or steps > 1_000_000:
        raise TextrnnError(f"--steps must be in [1, 1000000], got {steps}")
    result = predict_run(checkpoint, csv_files, steps, weights, device, future_csv=future_files)
    outputs = []  # (name, times, values): each series, then its quantiles (AEP_MW_q0.1, ...) with --quantiles
    for item in result["forecasts"]:
        outputs.append((item["series"], item["times"], item["values"]))
        for index, level in enumerate(item.get("levels", ())):
            outputs.append((f"{item['series']}_q{level:g}", item["times"], item["quantiles"][:, index]))
    rows: dict = {}
    for column, (_, output_times, values) in enumerate(outputs):
        for time, value in zip(output_times.tolist(), values.tolist()):
            rows.setdefault(time, {})[column] = value
    times = sorted(rows)
    texts = format_times(np.array(times, dtype="datetime64[s]"), result["time_format"])
    header = [result["time_col"], *(name for name, _, _ in outputs)]
    table = [header] + [
        [text, *(repr(round(rows[time][c], 6)) if c in rows[time] else "" for c in range(len(header) - 1))]
        for time, text in zip(times, texts)
    ]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(table)
    if out is None:
        click.echo(text.getvalue(), nl=False)
    else:
        from textrnn.atomic import atomic_write

        try:
            atomic_write(out, text.getvalue().encode())
        except OSError as error:
            raise TextrnnError(f"could not write {out} ({error.strerror or error})") from None
        click.echo(f"{steps} steps of {len(result['forecasts'])} series written to {out}", err=True)
    if plot is not None:
        plot_panels(plot, forecast_panels(result["forecasts"], history_points=max(5 * steps, 168)), "forecast")


@forecast.command("compare")
@_training_options(FORECAST, MODEL, OPTIMIZATION, skip=("--cell",))
@click.option(
    "--cells", default="gru,lstm", show_default=True, help="Comma-separated cells, trained one after another."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the runs.  [default: checkpoints/forecast-compare-<date-time>]",
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the validation sMAPE curves in this PNG."
)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def compare_command(cells, out, plot, threads, json_output, **options):
    """Train several cells on the same data, budget and settings (the GRU-vs-LSTM study) and tabulate them."""
    names = parse_cells(cells)
    configs = [_config(options, name) for name in names]
    if plot is not None:
        from textrnn.plots import require_matplotlib

        require_matplotlib()
    set_threads(threads)
    out = out or Path("checkpoints") / f"forecast-compare-{datetime.now():%Y%m%d-%H%M%S}"
    runs, baselines = [], None
    for name, config in zip(names, configs):
        click.echo(f"== {name}", err=True)
        summary = _run_with_progress(config, out / name)
        baselines = summary["baselines_overall"]
        runs.append(
            {
                "cell": name,
                "parameters": summary["parameters"],
                "train_seconds": summary["train_seconds"],
                "windows_per_sec": summary["windows_per_sec"],
                "steps": summary["steps"],
                "test": summary["overall"],
                "checkpoint": summary["checkpoint"],
                "interrupted": summary["interrupted"],
            }
        )
        if summary["interrupted"]:
            click.echo(f"interrupted during {name}; the finished runs are in {out}", err=True)
            break
    if json_output:
        click.echo(json.dumps(json_safe({"runs": runs, "baselines": baselines}), allow_nan=False))
    else:
        lines = [("forecast", "parameters", "train s", "windows/s", "test sMAPE", "MAPE", "MAE", "run")]
        for run in runs:
            test = run["test"]
            lines.append(
                (
                    run["cell"] + (" (interrupted)" if run["interrupted"] else ""),
                    f"{run['parameters']:,}",
                    f"{run['train_seconds']:.0f}",
                    f"{run['windows_per_sec']:,.0f}",
                    _percent(test["smape"]),
                    _percent(test["mape"]),
                    number(test["mae"], 1),
                    run["checkpoint"],
                )
            )
        for name, scores in (baselines or {}).items():
            lines.append(
                (
                    name.replace("_", " "),
                    "",
                    "",
                    "",
                    _percent(scores["smape"]),
                    _percent(scores["mape"]),
                    number(scores["mae"], 1),
                    "",
                )
            )
        click.echo(columns(lines))
    if plot is not None and runs:
        from textrnn.plots import plot_runs

        plot_runs([out / run["cell"] for run in runs], plot)
        click.echo(f"validation curves in {plot}", err=True)
    if len(runs) < len(names) or any(run["interrupted"] for run in runs):
        sys.exit(130)


@forecast.command("backtest")
@_run_options
@click.option("--folds", type=int, default=5, show_default=True, help="Rolling origins at the end of the series.")
@click.option(
    "--fold-size",
    type=int,
    help="Points per fold (each fold scores every window whose targets lie in it).  "
    "[default: the run's test part split evenly among the folds]",
)
@click.option(
    "--retrain",
    is_flag=True,
    help="Train a fresh model with the run's config on the data before each origin (an expanding window), "
    "instead of scoring the one trained model at every origin.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --retrain: directory for the fold runs.  [default: checkpoints/forecast-backtest-<date-time>]",
)
@click.option("--epochs", type=int, help="With --retrain: each fold's epoch limit (any limit replaces the run's).")
@click.option("--max-steps", type=int, help="With --retrain: each fold's step limit.")
@click.option("--max-seconds", type=float, help="With --retrain: each fold's time limit.")
@click.option("--threads", type=int, help="CPU threads for torch.  [default: torch's choice]")
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def backtest_command(
    checkpoint, weights, device, folds, fold_size, retrain, out, epochs, max_steps, max_seconds, threads, json_output
):
    """Score a forecasting run at --folds rolling origins at the end of its series, next to the baselines."""
    from textrnn.cli.common import stop_on_signals
    from textrnn.config import LIMITS
    from textrnn.forecast.backtest import backtest

    limits = dict(zip(LIMITS, (epochs, max_steps, max_seconds)))
    if any(value is not None for value in limits.values()) and not retrain:
        raise TextrnnError("--epochs, --max-steps and --max-seconds limit the training of --retrain; add --retrain")
    set_threads(threads)
    if retrain and out is None:
        out = Path("checkpoints") / f"forecast-backtest-{datetime.now():%Y%m%d-%H%M%S}"
    printer = ProgressPrinter()

    def progress(event: str, info: dict) -> None:
        if event == "fold":
            click.echo(f"== fold {info['fold']} of {info['folds']}, origin {info['origin']}", err=True)
        elif event == "end":
            printer.close()
        else:
            printer(event, info)

    with stop_on_signals() as should_stop:
        result = backtest(
            checkpoint,
            folds,
            fold_size,
            retrain=retrain,
            out_dir=out,
            limits=limits if any(value is not None for value in limits.values()) else None,
            weights=weights,
            device=device,
            callback=progress if retrain else None,
            should_stop=should_stop,
        )
    if json_output:
        click.echo(
            json.dumps(json_safe({key: result[key] for key in ("folds", "mean", "std", "fold_size")}), allow_nan=False)
        )
    else:
        click.echo(_backtest_table(result))
    if result["interrupted"]:
        click.echo(f"interrupted: {len(result['folds'])} fold(s) finished, in {out}", err=True)
        sys.exit(130)


def _backtest_table(result: dict) -> str:
    """One row per fold (all series pooled): the model and the baselines, the model's MAE and, with quantiles,
    the coverage of its intervals; then the mean and std over folds."""
    methods = ["model", "persistence", "seasonal_naive"]
    folds = result["folds"]
    keys = list(folds[0]["intervals_overall"]["coverage"]) if folds and "intervals_overall" in folds[0] else []

    def cells(scores: dict) -> list[str]:
        pooled = [scores["overall"], *(scores["baselines_overall"][name] for name in methods[1:])]
        coverage = scores.get("intervals_overall", {}).get("coverage", {})
        return [
            *(_percent(item["smape"]) for item in pooled),
            number(scores["overall"]["mae"], 1),
            *("n/a" if coverage.get(key) is None else f"{100 * coverage[key]:.1f}%" for key in keys),
        ]

    header = (
        "fold",
        "origin",
        "points",
        *(f"{name.replace('_', ' ')} sMAPE" for name in methods),
        "model MAE",
        *(f"{key} coverage" for key in keys),
    )
    lines = [header]
    for fold in folds:
        lines.append((str(fold["fold"]), fold["origin"], f"{fold['overall']['points']:,}", *cells(fold)))
    for label in ("mean", "std"):
        scores = result[label]
        if scores and scores.get("overall", {}).get("smape") is not None:
            lines.append((label, "", "", *cells(scores)))
    how = "retrained before each origin" if result["retrain"] else "one model at every origin"
    return f"{result['fold_size']:,} points per fold, {how}:\n{columns(lines)}"
