"""A global model: one ``Forecaster`` trained on windows of every series of a panel, each window divided by its own
level (as ES-RNN and DeepAR scale), drawn evenly from the series, with an optional embedding of the series id.

``PanelTask`` is what the one trainer (``train.fit``) runs; ``forecast_panel`` forecasts past the end of the
windows it is given.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from textrnn.config import ForecastConfig, PanelConfig
from textrnn.forecast.model import Forecaster
from textrnn.timeseries import m4
from textrnn.timeseries.panel import Panel
from textrnn.train.task import Task

LEVEL_FLOOR = 1e-6  # a window whose level is (about) 0 is divided by 1 instead


class PanelForecaster(nn.Module):
    """The ``Forecaster`` over level-scaled windows: input (B, T) values divided by their level minus 1, and the
    series numbers (B,); output (B, horizon) forecasts on the same scale. The encoder reads ``patch`` P values a
    step (T / P steps of P values; the window is cut from its end, so a T that P does not divide loses its
    first T mod P values). With ``id_embedding`` E > 0, an embedding of the series number is read beside them
    at every step (the encoder's input is P + E wide). With ``seasonal`` the head's output is added to the
    seasonal naive forecast of the window (its last ``config.season`` values repeated), not to the level."""

    def __init__(
        self, config: ForecastConfig, series: int, id_embedding: int = 0, patch: int = 1, seasonal: bool = False
    ):
        super().__init__()
        self.patch = patch
        # the head adds to the window's last season repeated (the seasonal naive forecast) instead of to 0
        self.seasonal = config.season if seasonal else None
        if self.seasonal is not None:
            self.register_buffer("repeat", seasonal_positions(config.lookback, config.horizon, self.seasonal), False)
        self.embedding = nn.Embedding(series, id_embedding) if id_embedding else None
        self.forecaster = Forecaster(config, patch + id_embedding)

    def forward(self, window: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
        steps = window.shape[1] // self.patch
        features = window[:, window.shape[1] - steps * self.patch :].reshape(len(window), steps, self.patch)
        if self.embedding is not None:
            embedded = self.embedding(series)[:, None, :].expand(-1, steps, -1)
            features = torch.cat([features, embedded], dim=-1)
        forecast = self.forecaster(features)
        if self.seasonal is not None:
            forecast = forecast + window[:, self.repeat]
        return forecast


def seasonal_positions(lookback: int, horizon: int, season: int) -> torch.Tensor:
    """(horizon,) the window positions of the seasonal naive forecast: step k (0-based) repeats the value
    season * (k // season + 1) steps before it."""
    steps = torch.arange(horizon)
    return lookback + steps - season * (steps // season + 1)


def level_of(window: torch.Tensor, level_window: int) -> torch.Tensor:
    """(B, T) -> (B, 1): the mean of the last ``level_window`` absolute values (1 where it is about 0)."""
    level = window[:, -level_window:].abs().mean(dim=1, keepdim=True)
    return torch.where(level > LEVEL_FLOOR, level, torch.ones_like(level))


def last_windows(panel: Panel, lookback: int) -> np.ndarray:
    """(S, lookback) the last ``lookback`` values of each series; a shorter series is padded at its start with
    its first value."""
    ends = panel.offsets[1:]
    positions = ends[:, None] - lookback + np.arange(lookback)[None, :]
    positions = np.maximum(positions, panel.offsets[:-1, None])
    return panel.values[positions]


def forecast_panel(model: PanelForecaster, windows: np.ndarray, level_window: int, batch: int = 4096) -> np.ndarray:
    """Forecasts (S, horizon) in the data's units past the end of ``windows`` (S, T) of series 0..S-1."""
    device = next(model.parameters()).device
    outputs = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(windows), batch):
            window = torch.from_numpy(windows[begin : begin + batch]).float().to(device)
            series = torch.arange(begin, begin + len(window), device=device)
            level = level_of(window, level_window)
            outputs.append(((model(window / level - 1.0, series) + 1.0) * level).double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outputs)


LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "huber": lambda p, t: F.huber_loss(p, t, delta=0.1)}


class PanelTask(Task):
    """Batches of windows (their flat start index and series number) drawn from every series alike: each epoch
    takes ``windows_per_series`` windows of each series that holds one, at random starts. Validation: the M4
    sMAPE of the forecasts past ``val_windows`` (S, lookback) against ``val_actual`` (S, horizon)."""

    metric = "smape"
    unit = "windows"
    carries_state = False
    even_rows = False

    def __init__(self, config, panel_config: PanelConfig, panel: Panel, validation, device, notes=()):
        self.config, self.panel_config, self.panel, self.device = config, panel_config, panel, device
        self.val_windows, self.val_actual = validation
        self.level_window = panel_config.level_window or config.season
        self.span = config.lookback + config.horizon
        self.trained = np.flatnonzero(panel.lengths >= self.span)  # series holding at least one window
        self.values = torch.from_numpy(panel.values).float().to(device)
        self.first = torch.from_numpy(panel.offsets[:-1][self.trained]).to(device)
        self.counts = torch.from_numpy(panel.lengths[self.trained] - self.span + 1).to(device)
        self.numbers = torch.from_numpy(self.trained).to(device)
        self.batch_size = config.batch_size
        self.per_epoch = math.ceil(len(self.trained) * panel_config.windows_per_series / config.batch_size)
        self.offsets = torch.arange(self.span, device=device)
        self.loss_function = LOSSES[config.loss]
        self.notes = list(notes)

    def build_model(self) -> PanelForecaster:
        panel_config = self.panel_config
        return PanelForecaster(
            self.config,
            len(self.panel),
            panel_config.id_embedding,
            panel_config.patch,
            panel_config.seasonal_residual,
        )

    def start_info(self) -> dict:
        windows = len(self.trained) * self.panel_config.windows_per_series
        return {
            "notes": self.notes,
            "source": f"{len(self.trained):,} series ({windows:,} windows an epoch)",
            "windows": {"train": windows, "val": len(self.val_actual)},
        }

    def batches(self, epoch: int, start: int):
        # One draw per (seed, epoch): a resumed run sees the same batches in the same order.
        generator = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % 2**63)
        each = self.panel_config.windows_per_series
        picks = torch.arange(len(self.trained)).repeat_interleave(each)
        picks = picks[torch.randperm(len(picks), generator=generator)].to(self.device)
        fractions = torch.rand(len(picks), generator=generator, dtype=torch.float64).to(self.device)
        starts = self.first[picks] + (fractions * self.counts[picks]).long()
        series = self.numbers[picks]
        size = self.batch_size
        for batch in range(start, self.per_epoch):
            rows = slice(batch * size, (batch + 1) * size)
            yield starts[rows], series[rows]

    def loss(self, model, batch, state):
        starts, series = batch
        values = self.values[starts[:, None] + self.offsets]  # (B, lookback + horizon)
        window, target = values[:, : self.config.lookback], values[:, self.config.lookback :]
        level = level_of(window, self.level_window)
        return self.loss_function(model(window / level - 1.0, series), target / level - 1.0), None

    def validate(self, model) -> dict:
        forecasts = forecast_panel(model, self.val_windows, self.level_window)
        return {"val_smape": float(np.mean(m4.smape_steps(self.val_actual, forecasts)))}

    def invalid_validation(self, step: int) -> str:
        return f"the validation forecasts at step {step} are not finite: lower --lr"

    def train_figures(self, mean_loss: float) -> dict:
        return {"train_loss": mean_loss}

    def summary(self, result: dict, model, main: bool) -> dict:
        """The trainer's result and the model with its last weights."""
        return {**result, "model": model}
