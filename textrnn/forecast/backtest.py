"""Rolling-origin backtests of forecasters (``textrnn forecast backtest``).

The last ``folds * fold_size`` points of the series are cut into ``folds`` consecutive blocks of
``fold_size`` points. Fold i starts at its origin: the forecasts scored in it are those of every
window whose targets all lie in the block (so every origin inside it, each with the history before
it), next to the persistence and seasonal-naive baselines on the same windows. Two ways:

- one trained model (the run of ``checkpoint``) scored at every origin. The blocks must lie in the
  run's test part, which the model never trained or validated on; by default they split it evenly,
  so that the folds together score what ``forecast eval`` scores;
- ``retrain``: before each origin a fresh model is trained, with the run's config, on the rows
  of its files that come before the origin (an expanding window; through
  ``forecast.task.train_forecaster``, so with the same splits, limits and early stopping), then scored
  on its block with its own scalers.

Origins are times of the first series: with several series, every one is cut at the same times.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

from textrnn.config import ForecastConfig
from textrnn.errors import TextrnnError
from textrnn.forecast.data import dataset_of, load_series, stored_scalers
from textrnn.forecast.evaluate import score
from textrnn.forecast.model import load_forecast_run
from textrnn.timeseries.read import is_parquet, read_table
from textrnn.timeseries.windows import Dataset, split_points
from textrnn.train.distributed import resolve_device

SCORE_KEYS = ("test", "overall", "baselines", "baselines_overall", "intervals", "intervals_overall")


@dataclasses.dataclass(frozen=True)
class Fold:
    """Fold ``number`` (1-based): the targets at times in ``[origin, end)`` (``end`` None: to the end)."""

    number: int
    origin: np.datetime64
    end: np.datetime64 | None


def plan_folds(
    config: ForecastConfig, times: np.ndarray, folds: int, fold_size: int | None, *, retrain: bool
) -> list[Fold]:
    """The ``folds`` blocks of ``fold_size`` points at the end of the series whose times are ``times`` (N,).

    ``fold_size`` None: the run's test part (its last ``test_fraction``) split evenly. A model scored
    at every origin may only meet points of its test part; a retrained one needs enough data before
    the first origin for its own training, validation and test parts.
    """
    if folds < 1:
        raise TextrnnError(f"--folds must be at least 1, got {folds}")
    length = len(times)
    _, test_start = split_points(length, config.val_fraction, config.test_fraction)
    test_points = length - test_start
    if fold_size is None:
        fold_size = test_points // folds
        if fold_size < config.horizon:
            raise TextrnnError(
                f"--folds {folds} splits the test part ({test_points:,} points) into folds of {fold_size:,} points, "
                f"fewer than the --horizon of {config.horizon}: use fewer folds or give --fold-size"
            )
    if fold_size < config.horizon:
        raise TextrnnError(
            f"--fold-size {fold_size} is shorter than the --horizon of {config.horizon}: a fold must hold at least "
            "one forecast's targets"
        )
    needed = folds * fold_size
    if not retrain and needed > test_points:
        raise TextrnnError(
            f"{folds} folds of {fold_size:,} points need the last {needed:,} points, but the run's test part holds "
            f"{test_points:,} (the model trained and validated on the rest): use fewer --folds, a smaller "
            "--fold-size, or --retrain"
        )
    if retrain:
        before = length - needed  # the data the first fold's model has
        train_end, _ = split_points(max(before, 0), config.val_fraction, config.test_fraction)
        if train_end < config.lookback + config.horizon:
            raise TextrnnError(
                f"{folds} folds of {fold_size:,} points leave {max(before, 0):,} points before the first origin, "
                f"too few to train a model there (its training part must hold --lookback + --horizon = "
                f"{config.lookback + config.horizon} points): use fewer --folds or a smaller --fold-size"
            )
    starts = [length - (folds - number) * fold_size for number in range(folds)]
    ends = [*(times[start] for start in starts[1:]), None]
    return [Fold(number + 1, times[start], end) for number, (start, end) in enumerate(zip(starts, ends))]


def fold_dataset(dataset: Dataset, fold: Fold) -> Dataset:
    """``dataset`` (every window a test window) keeping the windows whose targets all lie in ``fold``."""
    starts = dataset.starts["test"]
    first = dataset.times[starts + dataset.lookback]
    last = dataset.times[starts + dataset.lookback + dataset.horizon - 1]
    # a window stays inside one series and one segment, so its targets' times increase
    keep = first >= fold.origin
    if fold.end is not None:
        keep &= last < fold.end
    return dataclasses.replace(dataset, starts={**dataset.starts, "test": starts[keep]})


def _fold_scores(model, dataset: Dataset, fold: Fold) -> dict:
    selected = fold_dataset(dataset, fold)
    if len(selected.starts["test"]) == 0:
        raise TextrnnError(
            f"fold {fold.number} (from {fold.origin}) holds no window of --lookback then --horizon points "
            "(a gap splits the series there): use another --fold-size or --folds"
        )
    results = score(model, selected, "test")
    return {key: results[key] for key in SCORE_KEYS if key in results}


def backtest(
    checkpoint_dir=None,
    folds: int = 5,
    fold_size: int | None = None,
    *,
    retrain: bool = False,
    out_dir: str | Path | None = None,
    limits: dict | None = None,
    weights: str | None = None,
    device: str = "cpu",
    callback=None,
    should_stop=None,
) -> dict:
    """Backtest the forecasting run ``checkpoint_dir`` (default: the newest) at ``folds`` rolling origins.

    With ``retrain`` a model is trained before each origin into ``out_dir/fold-<i>/run`` (the rows before
    the origin written to ``out_dir/fold-<i>/data``), with the run's config and ``limits`` (``epochs``,
    ``max_steps``, ``max_seconds``; None: the run's); ``callback`` gets the trainer's events and
    ``("fold", {"fold", "folds", "origin"})`` before each fold. Returns ``folds`` (each with ``fold``,
    ``origin``, ``end``, the keys of ``score``: ``test``, ``overall``, ``baselines``, ``baselines_overall``,
    ``intervals`` with quantiles, and ``checkpoint`` when retrained), their ``mean`` and ``std`` (the
    sample standard deviation over folds; None with one fold), ``fold_size``, ``retrain`` and
    ``interrupted``.
    """
    model, config, stored = load_forecast_run(checkpoint_dir, weights, resolve_device(device))
    report = callback or (lambda event, info: None)
    series, files = load_series(config, step_seconds=stored["data"]["step_seconds"])
    for now, before in zip(files, stored["data"]["files"]):
        if now["sha256"] != before["sha256"]:
            raise TextrnnError(
                f"{now['path']} changed since training (sha256 differs): the folds would not be the run's data"
            )
    plan = plan_folds(config, series[0].times, folds, fold_size, retrain=retrain)
    size = fold_size or _default_size(config, len(series[0].times), folds)
    # Every window of the whole series is a candidate: its history may reach back before the fold.
    season = stored["data"]["season"]
    results, interrupted = [], False
    if not retrain:
        dataset = dataset_of(config, series, season, stored_scalers(stored))
        for fold in plan:
            report("fold", {"fold": fold.number, "folds": len(plan), "origin": str(fold.origin)})
            results.append({**_fold_info(fold), **_fold_scores(model, dataset, fold)})
    else:
        from textrnn.forecast.task import train_forecaster

        if out_dir is None:
            raise TextrnnError("--retrain needs a directory for the fold runs (--out)")
        out_dir = Path(out_dir)
        for fold in plan:
            report("fold", {"fold": fold.number, "folds": len(plan), "origin": str(fold.origin)})
            paths = [
                cut_file(Path(item["path"]), fold.origin, config, out_dir / f"fold-{fold.number}" / "data")
                for item in files
            ]
            fold_config = dataclasses.replace(config, csv=tuple(str(path) for path in paths), **(limits or {}))
            try:
                summary = train_forecaster(
                    fold_config, out_dir / f"fold-{fold.number}" / "run", callback=callback, should_stop=should_stop
                )
            except TextrnnError as error:
                raise TextrnnError(f"fold {fold.number} (origin {fold.origin}): {error}") from None
            if summary["interrupted"]:
                interrupted = True
                break
            fold_model, _, fold_stored = load_forecast_run(summary["checkpoint"], "best", model_device(model))
            dataset = dataset_of(config, series, season, stored_scalers(fold_stored))
            scores = _fold_scores(fold_model, dataset, fold)
            results.append({**_fold_info(fold), **scores, "checkpoint": summary["checkpoint"]})
    return {
        "folds": results,
        "mean": _aggregate(results, np.mean),
        "std": _aggregate(results, lambda values: np.std(values, ddof=1) if len(values) > 1 else None),
        "fold_size": size,
        "retrain": retrain,
        "checkpoint": stored["run_dir"],
        "interrupted": interrupted,
    }


def model_device(model) -> str:
    return str(next(model.parameters()).device)


def _default_size(config: ForecastConfig, length: int, folds: int) -> int:
    _, test_start = split_points(length, config.val_fraction, config.test_fraction)
    return (length - test_start) // folds


def _fold_info(fold: Fold) -> dict:
    return {"fold": fold.number, "origin": str(fold.origin), "end": None if fold.end is None else str(fold.end)}


def _aggregate(results: list[dict], function) -> dict:
    """The ``function`` (mean, std) over folds of every number in their scores, in the same nesting;
    ``points`` are summed."""

    def combine(items: list):
        first = items[0]
        if isinstance(first, dict):
            return {key: combine([item[key] for item in items]) for key in first if all(key in i for i in items)}
        values = [item for item in items if item is not None]
        if not values or not all(isinstance(item, (int, float)) for item in values):
            return None
        value = function(np.array(values, dtype=np.float64))
        return None if value is None or not math.isfinite(value) else float(value)

    if not results:
        return {}
    aggregated = {key: combine([fold[key] for fold in results]) for key in SCORE_KEYS if key in results[0]}
    return _sum_points(aggregated, results)


def _sum_points(aggregated: dict, results: list[dict]) -> dict:
    """``points`` in the mean and std are the total over the folds, not a statistic of them."""

    def fix(node: dict, sources: list[dict]) -> None:
        for key, value in node.items():
            if key == "points":
                node[key] = int(sum(source[key] for source in sources))
            elif isinstance(value, dict):
                fix(value, [source[key] for source in sources])

    for key in aggregated:
        if isinstance(aggregated[key], dict):
            fix(aggregated[key], [fold[key] for fold in results])
    return aggregated


def cut_file(path: Path, origin: np.datetime64, config: ForecastConfig, folder: Path) -> Path:
    """A copy of the data file ``path`` in ``folder`` holding only the rows before ``origin`` (and the header).

    Times are read as training reads them (``timeseries.read.read_table``), so the cut matches the series.
    """
    table = read_table(path, config.time_col, list(config.target), config.time_format, config.dayfirst)
    keep = ~np.isnat(table.times) & (table.times < origin)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if is_parquet(path):
        import pyarrow.parquet as parquet

        data = parquet.read_table(path)
        if data.num_rows != len(keep):
            raise TextrnnError(f"{path} could not be cut at {origin}: its rows changed while reading")
        parquet.write_table(data.filter(keep), target)
        return target
    with open(path, newline="", encoding="utf-8-sig") as handle:
        sample = handle.read(64 * 1024)
        handle.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        rows = [row for row in csv.reader(handle, dialect) if row]
    if len(rows) - 1 != len(keep):
        raise TextrnnError(
            f"{path} could not be cut at {origin}: it has {len(rows) - 1:,} data rows where pandas read "
            f"{len(keep):,} (quoted line breaks?); cut it yourself and train on the part before each origin"
        )
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=dialect.delimiter)
        writer.writerow(rows[0])
        writer.writerows(row for row, kept in zip(rows[1:], keep) if kept)
    return target
