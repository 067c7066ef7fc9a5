"""The series of a forecasting run: read and cleaned from its files, turned into windows, described for
``config.json`` (files with their checksums, each series' scaler and cleaning report) and rebuilt from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from textrnn.config import ForecastConfig
from textrnn.errors import TextrnnError
from textrnn.timeseries.clean import Series, clean, default_season
from textrnn.timeseries.features import Scaler
from textrnn.timeseries.read import read_table
from textrnn.timeseries.windows import Dataset, build_dataset

# ----------------------------------------------------------------------------- data


def load_series(config: ForecastConfig, paths=None, step_seconds: int | None = None) -> tuple[list[Series], list[dict]]:
    """Read and clean every ``--target`` column of every file: one series per (file, column)."""
    paths = [str(path) for path in (paths or config.csv)]
    if not paths:
        raise TextrnnError("no data: give --csv FILE (several allowed)")
    if not config.target:
        raise TextrnnError("no target: give --target COLUMN (several allowed)")
    stems = [Path(path).stem for path in paths]
    series, files = [], []
    for number, path in enumerate(paths):
        table = read_table(
            path,
            config.time_col,
            list(config.target),
            config.time_format,
            dayfirst=config.dayfirst,
            covariates=[*config.covariates, *config.future_covariates],
        )
        files.append(
            {
                "path": str(Path(path).resolve()),
                "sha256": table.sha256,
                "rows": table.rows,
                "time_format": table.time_format,
            }
        )
        for column, values in table.columns.items():
            if len(paths) == 1:
                name = column
            else:
                name = f"{stems[number]}:{column}" if stems.count(stems[number]) == 1 else f"{number}:{column}"
            series.append(clean(table.times, values, name, config.max_gap, step_seconds, table.covariates))
    steps = sorted({item.step_seconds for item in series})
    if len(steps) > 1:
        raise TextrnnError(
            f"the series have different steps ({', '.join(item.report['step'] + ' for ' + item.name for item in series)}): "
            "train them separately or resample them to one step"
        )
    return series, files


def dataset_of(
    config: ForecastConfig, series: list[Series], season: int, scalers=None, covariate_scalers=None
) -> Dataset:
    """The windows of ``config`` over ``series`` (see ``timeseries.windows.build_dataset``)."""
    return build_dataset(
        series,
        config.lookback,
        config.horizon,
        config.calendar,
        config.val_fraction,
        config.test_fraction,
        season,
        scalers=scalers,
        observed=config.covariates,
        known=config.future_covariates,
        country=config.country,
        covariate_scalers=covariate_scalers,
    )


def season_of(config: ForecastConfig, series: list[Series]) -> int:
    return config.season or default_season(series[0].step_seconds)


def describe_data(series: list[Series], files: list[dict], dataset: Dataset, config: ForecastConfig) -> dict:
    """What ``config.json`` keeps about the data: enough to check, rescale and explain it later."""
    return {
        "files": files,
        "step_seconds": series[0].step_seconds,
        "season": dataset.season,
        "input_size": int(dataset.features.shape[1]),
        "windows": {split: int(len(starts)) for split, starts in dataset.starts.items()},
        "series": [
            {
                "name": item.name,
                "scaler": dataclasses.asdict(scaler),
                "covariate_scalers": {name: dataclasses.asdict(each) for name, each in covariates.items()},
                "report": item.report,
                "first_test_time": first_test,
            }
            for item, scaler, covariates, first_test in zip(
                series, dataset.scalers, dataset.covariate_scalers, dataset.first_test_time
            )
        ],
    }


def stored_scalers(config: dict) -> list[Scaler]:
    return [Scaler(**item["scaler"]) for item in config["data"]["series"]]


def stored_covariate_scalers(config: dict) -> list[dict[str, Scaler]]:
    return [
        {name: Scaler(**each) for name, each in item.get("covariate_scalers", {}).items()}
        for item in config["data"]["series"]
    ]


def check_file_count(stored: dict, csv) -> None:
    trained_on = len(stored["data"]["files"])
    if len(csv) != trained_on:
        raise TextrnnError(
            f"the run was trained on {trained_on} file(s); give as many --csv files, in the same order "
            "(each with the same columns)"
        )
