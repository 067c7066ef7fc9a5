"""Recurrent cells and stacks shared by every model. State is a value: ``forward(x, state) -> (out, state)``.

``RNN``, ``GRU`` and ``LSTM`` are drop-in ``torch.nn`` modules (same arguments, parameter
names and state_dict) with a ``backend`` of "fused" (torch's kernels) or "scratch" (the
cells of ``textrnn.nn.cells``, written from the equations); ``PeepholeLSTM`` and deep
transitions (``transition_depth > 1``) exist in scratch form only.
"""

from textrnn.nn.layers import (
    BACKENDS,
    CELLS,
    GRU,
    LSTM,
    RNN,
    SCRATCH_ONLY_CELLS,
    PeepholeLSTM,
    check_backend,
    detach_state,
    make_encoder,
    map_state,
)

__all__ = [
    "BACKENDS",
    "CELLS",
    "GRU",
    "LSTM",
    "RNN",
    "SCRATCH_ONLY_CELLS",
    "PeepholeLSTM",
    "check_backend",
    "detach_state",
    "make_encoder",
    "map_state",
]
