"""Models: features -> recurrent encoder (``textrnn.nn``) -> head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from textrnn.config import ModelConfig
from textrnn.nn import make_encoder


class CharLM(nn.Module):
    """Character model: embedding (or one-hot) -> encoder -> deep output -> linear head over the vocabulary.

    ``task="causal"``: position t predicts the next token from the text up to t.
    ``task="infill"``: a bidirectional encoder; position t predicts token t itself from the
    forward state over the text before it and the backward state over the text after it,
    never from the token.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        self.config = config
        self.embedding = None if config.one_hot else nn.Embedding(config.vocab_size, config.embedding_size)
        input_size = config.vocab_size if config.one_hot else config.embedding_size
        encoder_options = dict(backend=config.backend, transition_depth=config.transition_depth)
        layers = (config.cell, input_size, config.hidden_size, config.num_layers, config.dropout)
        if config.task == "infill":
            # Two separate stacks: in a stacked bidirectional encoder, layer 2's forward direction
            # reads layer 1's backward outputs, which have already seen the token to predict.
            self.encoder = make_encoder(*layers, **encoder_options)
            self.backward_encoder = make_encoder(*layers, **encoder_options)
        else:
            self.encoder = make_encoder(*layers, bidirectional=config.bidirectional, **encoder_options)
            self.backward_encoder = None
        self.dropout = nn.Dropout(config.dropout)
        width = config.hidden_size * (2 if config.bidirectional else 1)
        # Deep output (DO-RNN): output_depth - 1 nonlinear layers between the state and the head.
        self.output_layers = nn.ModuleList(nn.Linear(width, width) for _ in range(config.output_depth - 1))
        self.head = nn.Linear(width, config.vocab_size)

    def forward(self, tokens: torch.Tensor, state=None):
        """``tokens`` (B, T) int64 -> logits (B, T, V) and the encoder state after the last step."""
        if self.embedding is None:
            features = F.one_hot(tokens, self.config.vocab_size).float()
        else:
            features = self.dropout(self.embedding(tokens))
        if self.backward_encoder is None:
            outputs, state = self.encoder(features, state)
        else:  # infill: state is unused (each window is read whole), so it comes back as None
            forward, _ = self.encoder(features)
            backward, _ = self.backward_encoder(features.flip(1))
            outputs, state = _neighbour_states(forward, backward.flip(1)), None
        for layer in self.output_layers:
            outputs = torch.tanh(layer(self.dropout(outputs)))
        return self.head(self.dropout(outputs)), state

    def step(self, tokens: torch.Tensor, state=None):
        """One causal step for generation: ``tokens`` (B,) -> logits (B, V) and the new state."""
        if self.embedding is None:
            features = F.one_hot(tokens, self.config.vocab_size).float()
        else:
            features = self.dropout(self.embedding(tokens))
        outputs, state = self.encoder.step(features, state)
        for layer in self.output_layers:
            outputs = torch.tanh(layer(self.dropout(outputs)))
        return self.head(self.dropout(outputs)), state


def _neighbour_states(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Forward and backward outputs (B, T, H) -> (B, T, 2H) where position t holds the forward state
    after token t-1 and the backward state after token t+1 (zeros past either end): nothing from token t."""
    zeros = forward.new_zeros(forward.shape[0], 1, forward.shape[2])
    return torch.cat([torch.cat([zeros, forward[:, :-1]], dim=1), torch.cat([backward[:, 1:], zeros], dim=1)], dim=-1)


class Forecaster(nn.Module):
    """Forecaster: a window of features -> encoder -> linear head from the last state to ``horizon`` values.

    Input (B, T, F) where feature 0 is the scaled target; output (B, horizon) scaled values.
    With ``residual`` the head predicts the change from the last observed value (the
    persistence forecast is the model's starting point). A bidirectional encoder reads the
    observed window both ways: the head sees the forward state after the last step and the
    backward state after the first, each of which has read the whole window.
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
        self.head = nn.Linear(config.hidden_size * (2 if config.bidirectional else 1), config.horizon)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.encoder(window)
        hidden = self.config.hidden_size
        last = outputs[:, -1, :hidden]
        if self.config.bidirectional:
            last = torch.cat([last, outputs[:, 0, hidden:]], dim=-1)
        forecast = self.head(self.dropout(last))
        if self.config.residual:
            forecast = forecast + window[:, -1, :1]
        return forecast
