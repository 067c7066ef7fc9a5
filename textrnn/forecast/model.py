"""The forecaster: a window of features -> recurrent encoder (``textrnn.nn``) -> a direct multi-output head or a
recurrent decoder over the horizon, with ordered quantiles.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from textrnn.checkpoint import load_weights, open_run
from textrnn.config import ForecastConfig, from_dict
from textrnn.errors import TextrnnError
from textrnn.nn import make_encoder


class Forecaster(nn.Module):
    """Forecaster: a window of features -> encoder -> linear head from the last state to ``horizon`` values.

    Input (B, T, F) where feature 0 is the scaled target; output (B, horizon) scaled values.
    With ``residual`` the head predicts the change from the last observed value (the
    persistence forecast is the model's starting point). A bidirectional encoder reads the
    observed window both ways: the head sees the forward state after the last step and the
    backward state after the first, each of which has read the whole window.

    With ``decoder`` a ``HorizonDecoder`` replaces the direct head: a recurrent decoder over the
    horizon, started from the encoder's final state, that reads the known-future features of each
    target time (``future``, (B, horizon, F - 1)). With ``quantiles`` (Q levels) every step gets Q
    values, sorted by construction (``ordered_quantiles``); ``forward`` returns the median and
    ``forward(..., all_quantiles=True)`` all of them, (B, horizon, Q).

    Covariates (``timeseries.features.window_features``): the last P feature columns are observed covariates
    (``config.covariates``), known only up to the forecast time, so the features of the target times
    that a model reads leave them out; the K columns before them are known-ahead covariates
    (``config.future_covariates``, then the holidays of ``config.country``), which the direct head also
    reads for every target time (B, horizon * K), next to the encoder's last state.
    """

    def __init__(self, config, input_size: int):
        super().__init__()
        self.config = config
        self.encoder = make_encoder(
            config.cell,
            input_size,
            config.hidden_size,
            config.num_layers,
            config.dropout,
            backend=config.backend,
            bidirectional=config.bidirectional,
            transition_depth=config.transition_depth,
        )
        self.dropout = nn.Dropout(config.dropout)
        levels = tuple(getattr(config, "quantiles", ()))  # runs from before quantiles existed have no such field
        self.outputs = max(1, len(levels))  # values per step ahead
        self.point = levels.index(0.5) if levels else 0  # the point forecast: the median
        # Runs from before covariates existed have no such fields.
        self.observed = len(getattr(config, "covariates", ()))
        self.known = len(getattr(config, "future_covariates", ())) + bool(getattr(config, "country", None))
        use_decoder = getattr(config, "decoder", False)
        self.decoder = HorizonDecoder(config, input_size - self.observed) if use_decoder else None
        # added to the quantiles after training, calibrated on the validation part (forecast.evaluate.calibrate)
        if levels:
            self.register_buffer("interval_offsets", torch.zeros(config.horizon, len(levels)))
        if self.decoder is None:
            # (horizon * Q): with one output per step the parameters are those of runs before quantiles
            width = config.hidden_size * (2 if config.bidirectional else 1)
            self.head = nn.Linear(width + config.horizon * self.known, config.horizon * self.outputs)

    def forward(
        self,
        window: torch.Tensor,
        future: torch.Tensor | None = None,
        all_quantiles: bool = False,
        from_position: int | None = None,
    ):
        """``window`` (B, T, F), ``future`` (B, horizon, F - 1) (the decoder's) -> (B, horizon) scaled forecasts,
        or (B, horizon, Q) with ``all_quantiles``.

        ``from_position`` p (training with ``forking``): the forecasts of the direct head from every position
        t >= p of the window as if the window ended there, (B, T - p, horizon, Q), ``future`` then being
        (B, T - p, horizon, F - 1).
        """
        outputs, state = self.encoder(window)
        if future is not None and self.observed:  # observed covariates are not known at the target times
            future = future[..., : future.shape[-1] - self.observed]
        if from_position is not None:
            return self._forking(window, outputs, future, from_position)
        if self.decoder is None:
            hidden = self.config.hidden_size
            last = outputs[:, -1, :hidden]
            if self.config.bidirectional:
                last = torch.cat([last, outputs[:, 0, hidden:]], dim=-1)
            last = self.dropout(last)
            if self.known:
                if future is None:
                    raise ValueError("a forecaster with known-ahead covariates needs their values at the target times")
                last = torch.cat([last, future[..., -self.known :].reshape(len(last), -1)], dim=-1)
            raw = self.head(last).view(-1, self.config.horizon, self.outputs)
        else:
            if future is None:
                raise ValueError("a forecaster with a decoder needs the known-future features of the horizon")
            raw = self.decoder(window, future, state)
        forecast = ordered_quantiles(raw, self.point)
        if self.outputs > 1:
            forecast = keep_order(forecast + self.interval_offsets, self.point)
        if self.config.residual:
            forecast = forecast + window[:, -1:, :1]
        return forecast if all_quantiles else forecast[..., self.point]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "interval_offsets"
        if hasattr(self, "interval_offsets") and key not in state_dict:  # a run from before calibration: none
            state_dict[key] = torch.zeros_like(self.interval_offsets)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _forking(self, window, outputs, future, first: int) -> torch.Tensor:
        """The direct head on the states (B, P, H) after each position from ``first`` on -> (B, P, horizon, Q)."""
        states = self.dropout(outputs[:, first:])
        batch, positions = states.shape[:2]
        if self.known:
            if future is None:
                raise ValueError("a forecaster with known-ahead covariates needs their values at the target times")
            states = torch.cat([states, future[..., -self.known :].reshape(batch, positions, -1)], dim=-1)
        raw = self.head(states).view(batch, positions, self.config.horizon, self.outputs)
        forecast = ordered_quantiles(raw, self.point)
        if self.config.residual:
            forecast = forecast + window[:, first:, :1, None]
        return forecast


# Increments between neighbouring quantiles start near softplus(-3) = 0.05 of the training range instead of
# softplus(0) = 0.69: intervals begin narrow, about as wide as the errors of a persistence forecast.
INCREMENT_SHIFT = -3.0


def ordered_quantiles(raw: torch.Tensor, point: int) -> torch.Tensor:
    """(B, H, Q) unconstrained -> (B, H, Q) increasing along Q, so quantiles never cross: the value at ``point``
    is taken as it is, the others are reached from it by non-negative (softplus) steps."""
    if raw.shape[-1] == 1:
        return raw
    center = raw[..., point : point + 1]
    steps = F.softplus(raw + INCREMENT_SHIFT)
    above = center + torch.cumsum(steps[..., point + 1 :], dim=-1)
    below = center - torch.cumsum(steps[..., :point].flip(-1), dim=-1).flip(-1)
    return torch.cat([below, center, above], dim=-1)


def keep_order(quantiles: torch.Tensor, point: int) -> torch.Tensor:
    """(..., Q) -> the same with every quantile at least as far from the one at ``point`` as its inner neighbour
    (an interval narrowed by calibration never crosses the median or an inner interval)."""
    upper = torch.cummax(quantiles[..., point:], dim=-1).values
    lower = torch.cummin(quantiles[..., : point + 1].flip(-1), dim=-1).values.flip(-1)
    return torch.cat([lower[..., :-1], upper], dim=-1)


MAX_SEASONAL_LAGS = 7  # with a week's look-back of hourly data: the same hour on each of the last 7 days


def seasonal_lags(lookback: int, horizon: int, season: int) -> torch.Tensor:
    """(horizon, J) window positions of the observed values whole seasons before each target: for step k
    (0-based) the j-th most recent one before it, ``lookback + k - season * (k // season + j)``, j = 1..J,
    with J as many as the look-back holds for every step (at most ``MAX_SEASONAL_LAGS``)."""
    count = min(MAX_SEASONAL_LAGS, lookback // season)
    steps = torch.arange(horizon)[:, None]
    back = season * (steps // season + torch.arange(1, count + 1)[None, :])
    return (lookback + steps - back).long()


class HorizonDecoder(nn.Module):
    """A recurrent decoder over the horizon (the encoder-decoder topology of seq2seq forecasting).

    Step k reads the known-future features of target time k (the calendar), the scaled values observed
    whole seasons before it (``seasonal_lags``: with a week's look-back of hourly data, that hour on each
    of the last 7 days) and its position ``(k + 1) / horizon``. It starts from the encoder's final state,
    so it has the encoder's cell, size and layers. Output (B, horizon, Q), before ``ordered_quantiles``.
    """

    def __init__(self, config, input_size: int):
        super().__init__()
        if config.season is None:
            raise ValueError("a decoder needs the season in its config (train_forecaster fills it in)")
        self.horizon = config.horizon
        self.register_buffer("lags", seasonal_lags(config.lookback, config.horizon, config.season), persistent=False)
        self.register_buffer("position", (torch.arange(config.horizon) + 1.0) / config.horizon, persistent=False)
        self.recurrent = make_encoder(
            config.cell,
            (input_size - 1) + self.lags.shape[1] + 1,
            config.hidden_size,
            config.num_layers,
            config.dropout,
            backend=config.backend,
            transition_depth=config.transition_depth,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, max(1, len(config.quantiles)))

    def forward(self, window: torch.Tensor, future: torch.Tensor, state) -> torch.Tensor:
        """``window`` (B, T, F), ``future`` (B, horizon, F - 1), the encoder's final ``state`` -> (B, horizon, Q)."""
        batch = window.shape[0]
        lagged = window[:, :, 0][:, self.lags]  # (B, horizon, J)
        position = self.position.to(window.dtype).expand(batch, self.horizon)[..., None]
        outputs, _ = self.recurrent(torch.cat([future, lagged, position], dim=-1), state)
        return self.head(self.dropout(outputs))


def load_forecast_run(checkpoint: str | Path | None = None, weights: str | None = None, device="cpu"):
    """Load ``(model, forecast_config, config)`` of a forecasting run.

    ``config["data"]`` holds the files, the series with their scalers and cleaning reports.
    """
    run_dir, weights, config = open_run(checkpoint, weights, "forecast")
    try:
        forecast_config = from_dict(ForecastConfig, config["forecast"])
        input_size = int(config["data"]["input_size"])
    except (KeyError, TypeError, ValueError) as error:
        raise TextrnnError(f"{run_dir / 'config.json'} has no valid forecast config ({error})") from None
    model, config["weights"] = load_weights(run_dir, weights, Forecaster(forecast_config, input_size), device)
    return model, forecast_config, config
