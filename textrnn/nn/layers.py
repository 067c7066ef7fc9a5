"""Recurrent stacks (layers, directions, dropout between layers) with a choice of backend.

``RNN``, ``GRU`` and ``LSTM`` subclass their ``torch.nn`` namesakes: torch creates,
names, initialises (and on a GPU flattens) the parameters, so the ``state_dict`` keys are
torch's own (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), the same seed gives the same
weights, and ``load_state_dict`` works in both directions. ``backend="fused"`` runs
torch's forward (cuDNN on a GPU, ATen/oneDNN on a CPU); ``backend="scratch"`` runs the
cells of ``textrnn.nn.cells`` over the very same parameters. The scratch-only variants
add parameters next to torch's: ``weight_transition{k}_l{layer}`` / ``bias_transition{k}_l{layer}``
(deep transition) and ``weight_peephole_l{layer}`` (peephole LSTM), with ``_reverse``
for the backward direction like the rest.

Shapes follow torch.nn: ``forward(x, state=None) -> (out, state)`` with ``x`` (T, B, I),
or (B, T, I) when ``batch_first``, or (T, I) unbatched; ``out`` (T, B, D * H); ``state``
(L * D, B, H), a pair ``(h, c)`` for the LSTMs, where L is ``num_layers`` and D is 2 for
bidirectional stacks, else 1.

``make_encoder`` builds the batch-first encoder that the models use.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from textrnn.errors import TextrnnError
from textrnn.nn import cells

CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu", "peephole_lstm")
BACKENDS = ("fused", "scratch")
SCRATCH_ONLY_CELLS = ("peephole_lstm",)


def check_backend(cell: str, backend: str, transition_depth: int = 1) -> None:
    """Refuse, with a message that names the fix, a combination the backend cannot run."""
    if backend not in BACKENDS:
        raise TextrnnError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not isinstance(transition_depth, int) or transition_depth < 1:
        raise TextrnnError(f"--transition-depth must be at least 1, got {transition_depth}")
    if backend == "fused" and cell in SCRATCH_ONLY_CELLS:
        raise TextrnnError(f"the {cell} cell exists only in scratch form: use --backend scratch")
    if backend == "fused" and transition_depth > 1:
        raise TextrnnError(
            f"a deep transition (--transition-depth {transition_depth}) exists only in scratch form: "
            "use --backend scratch"
        )


_STEP_CELLS = {
    "gru": torch.gru_cell,
    "lstm": torch.lstm_cell,
    "rnn_tanh": torch.rnn_tanh_cell,
    "rnn_relu": torch.rnn_relu_cell,
}


class _BackendChoice:
    """What RNN, GRU, LSTM and PeepholeLSTM add to torch's RNNBase: the scratch parameters and forward."""

    cell: str
    backend: str
    transition_depth: int

    def _add_scratch_parameters(self, cell: str, backend: str, transition_depth: int, peephole: bool = False) -> None:
        check_backend(cell, backend, transition_depth)
        self.cell = cell
        self.backend = backend
        self.transition_depth = transition_depth
        reference = self.weight_ih_l0
        factory = {"device": reference.device, "dtype": reference.dtype}
        state_width = self.proj_size or self.hidden_size
        added = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse") if self.bidirectional else ("",):
                for depth in range(transition_depth - 1):
                    names = [f"weight_transition{depth}_l{layer}{suffix}"]
                    shapes = [(state_width, state_width)]
                    if self.bias:
                        names.append(f"bias_transition{depth}_l{layer}{suffix}")
                        shapes.append((state_width,))
                    added += list(zip(names, shapes))
                if peephole:
                    added.append((f"weight_peephole_l{layer}{suffix}", (3 * self.hidden_size,)))
        # The same uniform(-1/sqrt(H), 1/sqrt(H)) as torch gives its own parameters.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in added:
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory).uniform_(-bound, bound)))

    def forward(self, x, state=None):
        """``x`` (T, B, I), or (B, T, I) when batch_first -> ``(out, state)`` with torch.nn's shapes and meaning."""
        check_backend(self.cell, self.backend, self.transition_depth)
        if self.backend == "fused":
            return super().forward(x, state)
        return self._scratch_forward(x, state)

    def step(self, x, state=None):
        """One time step for incremental generation: ``x`` (B, I) -> ``(out (B, H), state)``.

        Plain unidirectional cells run torch's fused cell kernels (``gru_cell``, ``lstm_cell``,
        ...) layer by layer: for a single step they cost a fraction of a whole-sequence call
        (oneDNN's LSTM sets up a primitive per call). Other variants take ``forward`` over one step.
        Dropout is not applied (generation runs in eval mode).
        """
        cell_function = _STEP_CELLS.get(self.cell)
        if cell_function is None or self.bidirectional or self.proj_size or self.transition_depth > 1 or self.training:
            out, state = self.forward(x.unsqueeze(1) if self.batch_first else x.unsqueeze(0), state)
            return out.squeeze(1 if self.batch_first else 0), state
        with_cell = self.cell == "lstm"
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
            state = (zeros, zeros) if with_cell else zeros
        hidden, cell = state if with_cell else (state, None)
        new_hidden, new_cell = [], []
        for layer in range(self.num_layers):
            weights = [getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")]
            biases = [getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}")] if self.bias else []
            if with_cell:
                x, layer_cell = cell_function(x, (hidden[layer], cell[layer]), *weights, *biases)
                new_cell.append(layer_cell)
            else:
                x = cell_function(x, hidden[layer], *weights, *biases)
            new_hidden.append(x)
        hidden = torch.stack(new_hidden)
        return x, ((hidden, torch.stack(new_cell)) if with_cell else hidden)

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", backend={self.backend}"
        return text + (f", transition_depth={self.transition_depth}" if self.transition_depth > 1 else "")

    def _scratch_forward(self, x, state):
        if isinstance(x, PackedSequence):
            raise TypeError("the scratch backend takes padded tensors, not a PackedSequence: use backend='fused'")
        if x.dim() not in (2, 3):
            raise RuntimeError(f"input must have 2 (unbatched) or 3 dimensions, got {x.dim()}")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )
        with_cell = self.cell in ("lstm", "peephole_lstm")
        unbatched = x.dim() == 2
        # The cells work time-major, (T, B, I): each step then reads one contiguous block.
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        hidden, cell = self._initial_state(x, state, with_cell, unbatched)

        directions = 2 if self.bidirectional else 1
        final_hidden, final_cell = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                output, last = self._scratch_layer(
                    layer_input, hidden[index], None if cell is None else cell[index], layer, direction
                )
                outputs.append(output)
                if with_cell:
                    final_hidden.append(last[0])
                    final_cell.append(last[1])
                else:
                    final_hidden.append(last)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)

        output, hidden = layer_input, torch.stack(final_hidden)
        cell = torch.stack(final_cell) if with_cell else None
        if unbatched:
            output, hidden = output.squeeze(1), hidden.squeeze(1)
            cell = None if cell is None else cell.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((hidden, cell) if with_cell else hidden)

    def _initial_state(self, x, state, with_cell: bool, unbatched: bool):
        """The state as time-major tensors ``(L * D, B, H)``: zeros when None, else checked like torch.nn."""
        stacked = self.num_layers * (2 if self.bidirectional else 1)
        batch = x.shape[1]
        hidden_shape = (stacked, batch, self.proj_size or self.hidden_size)
        cell_shape = (stacked, batch, self.hidden_size)
        if state is None:
            hidden = x.new_zeros(hidden_shape)
            return hidden, (x.new_zeros(cell_shape) if with_cell else None)
        hidden, cell = state if with_cell else (state, None)
        if unbatched:
            hidden = hidden.unsqueeze(1)
            cell = None if cell is None else cell.unsqueeze(1)
        if tuple(hidden.shape) != hidden_shape:
            raise RuntimeError(f"Expected hidden size {hidden_shape}, got {list(hidden.shape)}")
        if cell is not None and tuple(cell.shape) != cell_shape:
            raise RuntimeError(f"Expected hidden[1] size {cell_shape}, got {list(cell.shape)}")
        return hidden, cell

    def _scratch_layer(self, inputs, hidden, cell, layer: int, direction: int):
        """One layer and direction over ``inputs`` (T, B, I) -> ``(outputs (T, B, H), final state)``."""
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        weights = [getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)]
        biases = [getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)] if self.bias else [None, None]
        transition = [
            (getattr(self, f"weight_transition{depth}{suffix}"), getattr(self, f"bias_transition{depth}{suffix}", None))
            for depth in range(self.transition_depth - 1)
        ]
        options = {"transition": transition, "reverse": direction == 1}
        if self.cell == "gru":
            return cells.gru_layer(inputs, hidden, *weights, *biases, **options)
        if self.cell in ("rnn_tanh", "rnn_relu"):
            return cells.rnn_layer(inputs, hidden, *weights, *biases, relu=self.cell == "rnn_relu", **options)
        if self.cell == "peephole_lstm":
            options["peephole"] = getattr(self, "weight_peephole" + suffix)
        elif self.proj_size > 0:
            options["weight_hr"] = getattr(self, "weight_hr" + suffix)
        return cells.lstm_layer(inputs, (hidden, cell), *weights, *biases, **options)


class RNN(_BackendChoice, nn.RNN):
    """Elman RNN stack, ``torch.nn.RNN`` plus ``backend`` ("fused" or "scratch") and ``transition_depth``.

    ``h_t = act(W_ih x_t + b_ih + W_hh s_{t-1} + b_hh)`` with ``act`` tanh or relu, where
    ``s_{t-1} = h_{t-1}`` unless ``transition_depth > 1`` (scratch only) puts a tanh MLP
    of ``transition_depth - 1`` layers between ``h_{t-1}`` and ``W_hh``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "fused",
        transition_depth: int = 1,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            nonlinearity=nonlinearity,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            device=device,
            dtype=dtype,
        )
        self._add_scratch_parameters(f"rnn_{nonlinearity}", backend, transition_depth)


class GRU(_BackendChoice, nn.GRU):
    """GRU stack, ``torch.nn.GRU`` plus ``backend`` ("fused" or "scratch") and ``transition_depth``.

    The equations are torch's (see ``textrnn.nn.cells.gru_step``); with
    ``transition_depth > 1`` (scratch only) the ``h`` that meets ``W_hh`` first goes
    through a tanh MLP, while the interpolation ``(1 - z) * n + z * h`` keeps the raw ``h``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "fused",
        transition_depth: int = 1,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            device=device,
            dtype=dtype,
        )
        self._add_scratch_parameters("gru", backend, transition_depth)


class LSTM(_BackendChoice, nn.LSTM):
    """LSTM stack, ``torch.nn.LSTM`` (``proj_size`` included) plus ``backend`` and ``transition_depth``.

    The state is ``(h (L * D, B, H), c (L * D, B, H))``. With ``transition_depth > 1``
    (scratch only) the ``h`` that meets ``W_hh`` first goes through a tanh MLP; the cell
    ``c`` does not.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "fused",
        transition_depth: int = 1,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            proj_size=proj_size,
            device=device,
            dtype=dtype,
        )
        self._add_scratch_parameters("lstm", backend, transition_depth)


class PeepholeLSTM(LSTM):
    """LSTM whose gates also see the cell (scratch only; see ``textrnn.nn.cells.peephole_lstm_step``).

    The input and forget gates see the previous cell ``c_{t-1}``, the output gate the new
    cell ``c_t``. The parameters are the LSTM's (same names and shapes, so an LSTM's
    ``state_dict`` loads with ``strict=False``) plus ``weight_peephole_l{layer}`` (3H):
    the diagonal peephole weights of the input, forget and output gates, in that order.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "scratch",
        transition_depth: int = 1,
    ) -> None:
        # Validate before torch's constructor so the refusal is the clear one.
        check_backend("peephole_lstm", backend, transition_depth)
        nn.LSTM.__init__(
            self,
            input_size,
            hidden_size,
            num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            device=device,
            dtype=dtype,
        )
        self._add_scratch_parameters("peephole_lstm", backend, transition_depth, peephole=True)


def make_encoder(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    *,
    backend: str = "fused",
    bidirectional: bool = False,
    transition_depth: int = 1,
) -> nn.Module:
    """The batch-first encoder of the models: ``(B, T, input_size) -> (B, T, D * H)`` and the state.

    ``dropout`` applies between layers only (none with one layer). Raises ``TextrnnError``
    for an unknown cell or backend and for variants the fused backend does not have.
    """
    if cell not in CELLS:
        raise TextrnnError(f"unknown cell {cell!r}: choose one of {', '.join(CELLS)}")
    check_backend(cell, backend, transition_depth)
    options = {
        "num_layers": num_layers,
        "batch_first": True,
        "dropout": dropout if num_layers > 1 else 0.0,
        "bidirectional": bidirectional,
        "backend": backend,
        "transition_depth": transition_depth,
    }
    if cell == "gru":
        return GRU(input_size, hidden_size, **options)
    if cell == "lstm":
        return LSTM(input_size, hidden_size, **options)
    if cell == "peephole_lstm":
        return PeepholeLSTM(input_size, hidden_size, **options)
    return RNN(input_size, hidden_size, nonlinearity=cell.removeprefix("rnn_"), **options)


def map_state(function, state):
    """Apply ``function`` to every tensor of a (possibly nested) state; sequences come back as tuples."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return function(state)
    return tuple(map_state(function, part) for part in state)


def detach_state(state):
    """Cut the graph behind a (possibly nested) state: truncated backpropagation through time."""
    return map_state(torch.Tensor.detach, state)
