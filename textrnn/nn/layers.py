"""Stacked recurrent encoders behind one interface.

``make_encoder`` returns a module with ``forward(x, state=None) -> (out, state)`` on
batch-first input ``x`` of shape ``(B, T, input_size)``; ``out`` is ``(B, T, H)``.
The state is a tensor ``(num_layers, B, H)`` (a pair of them for the LSTM).
"""

from __future__ import annotations

import torch
from torch import nn

_FUSED = {
    "gru": lambda **kw: nn.GRU(**kw),
    "lstm": lambda **kw: nn.LSTM(**kw),
    "rnn_tanh": lambda **kw: nn.RNN(nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: nn.RNN(nonlinearity="relu", **kw),
}


def make_encoder(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    """A stack of ``num_layers`` recurrent layers with ``dropout`` between them (fused torch.nn)."""
    return _FUSED[cell](
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0,
    )


def detach_state(state):
    """Cut the graph behind a (possibly nested) state: truncated backpropagation through time."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(part) for part in state)
