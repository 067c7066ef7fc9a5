"""The forecasting task: a ``Forecaster`` on windows of CSV series, trained by ``trainer.fit``.

``train_forecaster`` is the library's entry point (``textrnn forecast train``): it reads and
cleans the series, builds the windows and the run directory, hands a ``ForecastTask`` to the
one trainer, then scores the best weights on the test split next to the baselines.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from textrnn import checkpoint
from textrnn.config import ForecastConfig, from_dict
from textrnn.errors import TextrnnError
from textrnn.forecast.data import dataset_of, describe_data, load_series, season_of
from textrnn.forecast.evaluate import calibrate, future_features, score
from textrnn.forecast.model import Forecaster
from textrnn.timeseries.clean import describe
from textrnn.timeseries.windows import Dataset, window_indices
from textrnn.train.distributed import join
from textrnn.train.state import given_now, resumed_config
from textrnn.train.task import Task
from textrnn.train.trainer import fit


def pinball_loss(predicted: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss of quantiles ``predicted`` (B, H, Q) at ``levels`` (Q,) for ``target`` (B, H):
    τ (y - q) where y >= q, (1 - τ) (q - y) where y < q; minimised by the τ-quantile of y."""
    error = target[..., None] - predicted
    return torch.maximum(levels * error, (levels - 1) * error).mean()


def _loss(config: ForecastConfig):
    if config.loss == "l1":
        return F.l1_loss
    if config.loss == "huber":
        return lambda predicted, target: F.huber_loss(predicted, target, delta=0.1)  # 10% of the training range
    return F.mse_loss


class ForecastTask(Task):
    """Shuffled batches of training windows ``(B,)`` (their start indices); validation: pooled sMAPE."""

    metric = "smape"
    unit = "windows"
    carries_state = False
    even_rows = False  # windows are independent: a short last batch splits unevenly among processes

    def __init__(self, config: ForecastConfig, dataset: Dataset, data: dict, series: list, device):
        self.config = config
        self.dataset = dataset
        self.data = data
        self.series = series
        self.features = torch.from_numpy(dataset.features).to(device)
        self.values = torch.from_numpy(dataset.values).to(device)
        self.train_starts = torch.from_numpy(dataset.starts["train"]).to(device)
        self.batch_size = config.batch_size
        self.per_epoch = math.ceil(len(self.train_starts) / config.batch_size)
        self.loss_function = _loss(config)
        self.levels = torch.tensor(config.quantiles, dtype=torch.float32, device=device)
        self.horizon_steps = torch.arange(config.horizon, device=device)[None, :]  # (1, H)

    def build_model(self) -> Forecaster:
        return Forecaster(self.config, self.dataset.features.shape[1])

    def start_info(self) -> dict:
        """The series and windows; ``notes``: each series' cleaning report, and ``source``, as progress lines say."""
        windows = self.data["windows"]
        return {
            "series": [(item.name, item.report) for item in self.series],
            "windows": windows,
            "season": self.dataset.season,
            "notes": [f"{item.name}: {describe(item.report)}" for item in self.series],
            "source": f"{windows['train']:,} train / {windows['val']:,} val / {windows['test']:,} test windows",
        }

    def batches(self, epoch: int, start: int):
        # One shuffle per (seed, epoch): a resumed run sees the same batches in the same order.
        generator = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % 2**63)
        order = torch.randperm(len(self.train_starts), generator=generator).to(self.train_starts.device)
        size = self.batch_size
        for batch in range(start, self.per_epoch):
            yield (self.train_starts[order[batch * size : (batch + 1) * size]],)

    def loss(self, model, batch, state):
        if self.config.forking:
            return self._forking_loss(model, batch[0]), None
        inputs, targets = window_indices(batch[0], self.config.lookback, self.config.horizon, xp=torch)
        window, future = self.features[inputs], future_features(self.features, targets)
        if self.config.quantiles:  # every quantile, trained with the pinball loss (--loss is for point forecasts)
            return pinball_loss(model(window, future, all_quantiles=True), self.values[targets], self.levels), None
        return self.loss_function(model(window, future), self.values[targets]), None

    def _forking_loss(self, model, starts: torch.Tensor) -> torch.Tensor:
        """Forking sequences (MQ-RNN, Wen et al. 2017): the head forecasts the horizon from every position of the
        window's second half, as if the window ended there: lookback / 2 forecasts per window for one pass of the
        encoder. Every target lies in the window or its horizon, so in the training part."""
        lookback = self.config.lookback
        first = lookback // 2
        inputs, _ = window_indices(starts, lookback, 0, xp=torch)
        ahead = torch.arange(first + 1, lookback + 1, device=starts.device)[:, None] + self.horizon_steps  # (P, H)
        targets = starts[:, None, None] + ahead  # (B, P, H)
        # the known-ahead covariates of every position's horizon, only where the head reads them (a large gather)
        known = self.config.future_covariates or self.config.country
        future = future_features(self.features, targets) if known else None
        forecast = model(self.features[inputs], future, all_quantiles=True, from_position=first)
        if self.config.quantiles:
            return pinball_loss(forecast, self.values[targets], self.levels)
        return self.loss_function(forecast[..., 0], self.values[targets])

    def validate(self, model) -> dict:
        val = score(model, self.dataset, "val", self.features)["overall"]
        return {"val_smape": val["smape"], "val_mae": val["mae"]}

    def invalid_validation(self, step: int) -> str:
        return (
            "the validation forecasts overflow when scaled back to the data's units (the values reach "
            f"{np.abs(self.dataset.raw).max():g}): rescale the data"
        )

    def train_figures(self, mean_loss: float) -> dict:
        return {"train_loss": mean_loss}

    def summary(self, result: dict, model, main: bool) -> dict:
        """The test scores of the best weights by validation, next to the baselines (also in results.json)."""
        if not main:  # under torchrun the first process scores and reports
            return result
        started = time.perf_counter()
        best = checkpoint.read_tensors(Path(result["checkpoint"]) / "best.pt")
        model.load_state_dict(best["model"])
        if self.config.quantiles:  # intervals calibrated on the validation part, stored with the best weights
            calibrate(model, self.dataset, self.features)
            best["model"] = model.state_dict()
            checkpoint.write_tensors(Path(result["checkpoint"]) / "best.pt", best)
        results = score(model, self.dataset, "test", self.features)
        summary = {
            **{key: results[key] for key in ("test", "overall", "baselines", "baselines_overall")},
            **{key: results[key] for key in ("intervals", "intervals_overall") if key in results},  # --quantiles
            "best_val_smape": result["best_val"],
            "best_step": best.get("step"),
            **{key: result[key] for key in ("steps", "epochs", "train_seconds", "windows_per_sec", "parameters")},
            **{key: result[key] for key in ("stopped_early", "interrupted", "skipped_steps")},
            "elapsed_sec": result["elapsed_sec"] + time.perf_counter() - started,
            "checkpoint": result["checkpoint"],
        }
        public = {key: value for key, value in summary.items() if key != "interrupted"}
        checkpoint.write_json(Path(result["checkpoint"]) / "results.json", checkpoint.json_safe(public))
        return {**summary, "arrays": results["arrays"], "dataset": self.dataset}


def train_forecaster(
    config: ForecastConfig, out_dir: str | Path, *, resume: bool = False, callback=None, should_stop=None
) -> dict:
    """Train a forecaster, then score its best weights on the test split next to the baselines.

    ``resume=True`` continues the run in ``out_dir`` (its stored config, with the limits,
    ``eval_every``, ``patience`` and ``device`` of ``config``). Returns the summary: ``test``, ``overall``,
    ``baselines``, ``baselines_overall``, ``elapsed_sec``, ``checkpoint`` and training figures.
    """
    out_dir = Path(out_dir)
    if resume:
        stored = checkpoint.read_config(out_dir, task="forecast")
        config = resumed_config(from_dict(ForecastConfig, stored["forecast"]), given_now(config))
    else:  # stored absolute, so eval, predict and --resume find the files from any directory
        config = dataclasses.replace(
            config, csv=tuple(str(Path(path).resolve()) if Path(path).exists() else path for path in config.csv)
        )
    series, files = load_series(config)
    if resume:
        for now, before in zip(files, stored["data"]["files"]):
            if now["sha256"] != before["sha256"]:
                raise TextrnnError(f"{now['path']} changed since the run began (sha256 differs): it cannot be resumed")
    if config.decoder and config.season is None:  # the decoder reads values whole seasons back: store the season
        config = dataclasses.replace(config, season=season_of(config, series))
    dataset = dataset_of(config, series, season_of(config, series))
    data = describe_data(series, files, dataset, config)
    world, device = join(config.device)
    return fit(
        ForecastTask(config, dataset, data, series, device),
        config,
        out_dir,
        world=world,
        device=device,
        resume=resume,
        run_config=checkpoint.run_config("forecast", forecast=config, data=data),
        callback=callback,
        should_stop=should_stop,
    )
