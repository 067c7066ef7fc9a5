"""Recurrent cells, stacks and regularizers shared by every model. State is a value: ``forward(x, state) -> (out, state)``.

``RNN``, ``GRU`` and ``LSTM`` are drop-in ``torch.nn`` modules (same arguments, parameter
names and state_dict) with a ``backend`` of "fused" (torch's kernels) or "scratch" (the
cells of ``textrnn.nn.cells``, written from the equations); ``PeepholeLSTM``,
``LayerNormLSTM``, ``LayerNormGRU``, deep transitions (``transition_depth > 1``) and
zoneout exist in scratch form only, as do the Mogrifier LSTM (``MogrifierLSTM``) and the minGRU and minLSTM
stacks trained by a parallel scan (``MinimalRNN``, ``textrnn.nn.minimal``). Weight drop and locked dropout between layers work on
both backends; ``textrnn.nn.regularize`` holds them and the model-level regularizers
(``LockedDropout``, embedding dropout, AR/TAR).
"""

from textrnn.nn.layers import (
    BACKENDS,
    CELLS,
    GRU,
    LSTM,
    LSTM_CELLS,
    RNN,
    SCRATCH_ONLY_CELLS,
    LayerNormGRU,
    LayerNormLSTM,
    MogrifierLSTM,
    PeepholeLSTM,
    check_backend,
    check_minimal,
    check_regularizers,
    detach_state,
    make_encoder,
    map_state,
)
from textrnn.nn.minimal import MINIMAL_CELLS, MinimalRNN
from textrnn.nn.regularize import (
    LockedDropout,
    activation_regularization,
    drop_connect,
    embedding_dropout,
    temporal_activation_regularization,
)

__all__ = [
    "BACKENDS",
    "CELLS",
    "GRU",
    "LSTM",
    "LSTM_CELLS",
    "MINIMAL_CELLS",
    "RNN",
    "SCRATCH_ONLY_CELLS",
    "LayerNormGRU",
    "LayerNormLSTM",
    "LockedDropout",
    "MinimalRNN",
    "MogrifierLSTM",
    "PeepholeLSTM",
    "activation_regularization",
    "check_backend",
    "check_minimal",
    "check_regularizers",
    "detach_state",
    "drop_connect",
    "embedding_dropout",
    "make_encoder",
    "map_state",
    "temporal_activation_regularization",
]
