"""The character language model: embedding (or one-hot) -> recurrent encoder (``textrnn.nn``) -> head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from textrnn.checkpoint import load_weights, open_run
from textrnn.config import ModelConfig, from_dict
from textrnn.errors import TextrnnError
from textrnn.nn import LockedDropout, embedding_dropout, make_encoder
from textrnn.text.tokenizer import load_tokenizer


class TiedHead(nn.Module):
    """The head of a model with tied weights: logits = ``P(x) E^T + b`` (Press and Wolf 2017; Inan et al. 2017).

    ``E`` is the embedding matrix (V, E), passed in at every call rather than held, so the
    model has it once: in ``parameters()``, in the ``state_dict`` and in the file, and a
    loaded model is tied by construction. ``P`` is a linear map (no bias) from the
    recurrent width to E when the two differ, else the identity.
    """

    def __init__(self, width: int, embedding_size: int, vocab_size: int):
        super().__init__()
        self.projection = None if width == embedding_size else nn.Linear(width, embedding_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, outputs: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        """``outputs`` (..., width), ``embedding_weight`` (V, E) -> logits (..., V)."""
        if self.projection is not None:
            outputs = self.projection(outputs)
        return F.linear(outputs, embedding_weight, self.bias)


class CharLM(nn.Module):
    """Character model: embedding (or one-hot) -> encoder -> deep output -> linear head over the vocabulary.

    ``task="causal"``: position t predicts the next token from the text up to t.
    ``task="infill"``: a bidirectional encoder; position t predicts token t itself from the
    forward state over the text before it and the backward state over the text after it,
    never from the token.

    Regularizers (``textrnn.nn.regularize``; training mode only, all off by default):
    ``embedding_dropout`` drops whole rows of the embedding matrix; locked dropout (one mask
    per row shared over time) on the embedding output (``dropout_embedding``), between
    layers (``dropout_layers``) and on the last layer's outputs (``dropout_output``);
    ``weight_drop`` on the encoder's ``W_hh``; ``zoneout`` in the (scratch) cells. The
    plain ``dropout`` (a new mask per step) still applies where it did, after the locked
    one. ``tie_weights``: the head's matrix is the embedding matrix (``TiedHead``).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        self.config = config
        self.embedding = None if config.one_hot else nn.Embedding(config.vocab_size, config.embedding_size)
        if config.tie_weights and self.embedding is not None:
            # The matrix is also the output layer: N(0, 1) entries would start the logits far too large.
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        input_size = config.vocab_size if config.one_hot else config.embedding_size
        encoder_options = dict(
            backend=config.backend,
            transition_depth=config.transition_depth,
            weight_drop=config.weight_drop,
            locked_dropout=config.dropout_layers,
            zoneout=config.zoneout,
            mogrify_rounds=config.mogrify_rounds,
            mogrify_rank=config.mogrify_rank,
            block=config.block,
            conv_kernel=config.conv_kernel,
        )
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
        self.embedding_locked_dropout = LockedDropout(config.dropout_embedding)
        self.output_locked_dropout = LockedDropout(config.dropout_output)
        width = config.hidden_size * (2 if config.bidirectional else 1)
        # Deep output (DO-RNN): output_depth - 1 nonlinear layers between the state and the head.
        self.output_layers = nn.ModuleList(nn.Linear(width, width) for _ in range(config.output_depth - 1))
        if config.tie_weights:
            self.head = TiedHead(width, config.embedding_size, config.vocab_size)
        else:
            self.head = nn.Linear(width, config.vocab_size)

    def forward(self, tokens: torch.Tensor, state=None, *, activations: bool = False):
        """``tokens`` (B, T) int64 -> logits (B, T, V) and the encoder state after the last step.

        ``activations=True`` adds a third value for AR/TAR: the last recurrent layer's outputs
        (B, T, D * H) before and after the output's locked dropout, ``(raw, dropped)``.
        """
        features = self._features(tokens)
        if self.backward_encoder is None:
            outputs, state = self.encoder(features, state)
        else:  # infill: state is unused (each window is read whole), so it comes back as None
            forward, _ = self.encoder(features)
            backward, _ = self.backward_encoder(features.flip(1))
            outputs, state = _neighbour_states(forward, backward.flip(1)), None
        dropped = self.output_locked_dropout(outputs)
        logits = self._logits(dropped)
        return (logits, state, (outputs, dropped)) if activations else (logits, state)

    def step(self, tokens: torch.Tensor, state=None):
        """One causal step for generation: ``tokens`` (B,) -> logits (B, V) and the new state."""
        outputs, state = self.encoder.step(self._features(tokens), state)
        return self._logits(self.output_locked_dropout(outputs)), state

    def _features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, T) or (B,) -> the encoder's input (B, T, E) or (B, E), dropouts applied in training."""
        if self.embedding is None:
            return F.one_hot(tokens, self.config.vocab_size).float()
        if self.training and self.config.embedding_dropout > 0:
            features = F.embedding(
                tokens, embedding_dropout(self.embedding.weight, self.config.embedding_dropout, True)
            )
        else:
            features = self.embedding(tokens)
        return self.dropout(self.embedding_locked_dropout(features))

    def _logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The last layer's outputs (..., D * H) -> deep output layers -> head -> logits (..., V)."""
        for layer in self.output_layers:
            outputs = torch.tanh(layer(self.dropout(outputs)))
        if self.config.tie_weights:
            return self.head(self.dropout(outputs), self.embedding.weight)
        return self.head(self.dropout(outputs))


def _neighbour_states(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Forward and backward outputs (B, T, H) -> (B, T, 2H) where position t holds the forward state
    after token t-1 and the backward state after token t+1 (zeros past either end): nothing from token t."""
    zeros = forward.new_zeros(forward.shape[0], 1, forward.shape[2])
    return torch.cat([torch.cat([zeros, forward[:, :-1]], dim=1), torch.cat([backward[:, 1:], zeros], dim=1)], dim=-1)


def load_run(checkpoint: str | Path | None = None, weights: str | None = None, device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer, config)`` from a run directory (best weights unless told otherwise)."""
    run_dir, weights, config = open_run(checkpoint, weights, "charlm")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json", config["tokenizer"].get("type", "char"))
    try:
        model_config = from_dict(ModelConfig, config["model"])
    except (KeyError, TypeError) as error:
        raise TextrnnError(f"{run_dir / 'config.json'} has no valid model config ({error})") from None
    if model_config.vocab_size != tokenizer.vocab_size:
        raise TextrnnError(
            f"{run_dir}: tokenizer.json has {tokenizer.vocab_size} tokens but the model was built for "
            f"{model_config.vocab_size}: the tokenizer does not belong to these weights"
        )
    model, config["weights"] = load_weights(run_dir, weights, CharLM(model_config), device)
    return model, tokenizer, config
