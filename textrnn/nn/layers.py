"""Recurrent stacks (layers, directions, dropout between layers) with a choice of backend.

``RNN``, ``GRU`` and ``LSTM`` subclass their ``torch.nn`` namesakes: torch creates,
names, initialises (and on a GPU flattens) the parameters, so the ``state_dict`` keys are
torch's own (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), the same seed gives the same
weights, and ``load_state_dict`` works in both directions. ``backend="fused"`` runs
torch's forward (cuDNN on a GPU, ATen/oneDNN on a CPU); ``backend="scratch"`` runs the
cells of ``textrnn.nn.cells`` over the very same parameters. The scratch-only variants
add parameters next to torch's: ``weight_transition{k}_l{layer}`` / ``bias_transition{k}_l{layer}``
(deep transition), ``weight_peephole_l{layer}`` (peephole LSTM) and
``weight_layernorm_ih_l{layer}``, ``weight_layernorm_hh_l{layer}`` (plus, for the LSTM,
``weight_layernorm_cell_l{layer}`` and ``bias_layernorm_cell_l{layer}``) for the
layer-normalized cells, with ``_reverse`` for the backward direction like the rest.

Regularizers (``textrnn.nn.regularize``), all off by default and active in training only:
``weight_drop`` (DropConnect on every ``W_hh``, both backends), ``locked_dropout`` (one
mask per row and feature shared over time, between layers, both backends) and
``zoneout`` (scratch only). With weight drop or locked dropout in training, the fused
backend still runs torch's kernel, but is called directly (``torch._VF``) with the
dropped matrices in place of the stored ones, layer by layer when locked dropout sits
between layers: nothing is re-registered, ``state_dict`` keys stay torch's, the stored
weights are never written, and gradients reach them through the drop. The masks are
drawn in one order on both backends (weight masks, then locked masks), so a fused and
a scratch module seeded alike drop the same entries.

Shapes follow torch.nn: ``forward(x, state=None) -> (out, state)`` with ``x`` (T, B, I),
or (B, T, I) when ``batch_first``, or (T, I) unbatched; ``out`` (T, B, D * H); ``state``
(L * D, B, H), a pair ``(h, c)`` for the LSTMs, where L is ``num_layers`` and D is 2 for
bidirectional stacks, else 1.

``make_encoder`` builds the batch-first encoder that the models use.
"""

from __future__ import annotations

import math

import torch
from torch import _VF, Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from textrnn.errors import TextrnnError
from textrnn.nn import cells
from textrnn.nn.minimal import MINIMAL_CELLS, MinimalRNN
from textrnn.nn.regularize import check_probability, drop_connect, locked_mask

CELLS = (
    "gru",
    "lstm",
    "rnn_tanh",
    "rnn_relu",
    "peephole_lstm",
    "layernorm_lstm",
    "layernorm_gru",
    "mogrifier",
    *MINIMAL_CELLS,
)
BACKENDS = ("fused", "scratch")
SCRATCH_ONLY_CELLS = ("peephole_lstm", "layernorm_lstm", "layernorm_gru", "mogrifier", *MINIMAL_CELLS)
LSTM_CELLS = ("lstm", "peephole_lstm", "layernorm_lstm", "mogrifier")
"""The cells whose state is a pair ``(h, c)``."""


def check_backend(cell: str, backend: str, transition_depth: int = 1, zoneout: float = 0.0) -> None:
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
    check_probability(zoneout, "--zoneout")
    if backend == "fused" and zoneout > 0:
        raise TextrnnError(f"zoneout (--zoneout {zoneout}) exists only in scratch form: use --backend scratch")
    if cell in MINIMAL_CELLS and (transition_depth > 1 or zoneout > 0):
        raise TextrnnError(
            f"the {cell} cell has no recurrent matrix for a deep transition or zoneout: "
            "drop --transition-depth and --zoneout"
        )


def check_minimal(cell: str, weight_drop: float, bidirectional: bool) -> None:
    """Refuse what minGRU and minLSTM cannot do, naming the fix."""
    if cell not in MINIMAL_CELLS:
        return
    if weight_drop > 0:
        raise TextrnnError(
            f"--weight-drop drops entries of the recurrent matrices, which the {cell} cell does not have: "
            "use --weight-drop 0 (locked dropout between and after the layers still applies)"
        )
    if bidirectional:
        raise TextrnnError(f"the {cell} cell runs forward only: drop --bidirectional")


def check_regularizers(weight_drop: float = 0.0, locked_dropout: float = 0.0, zoneout: float = 0.0) -> None:
    """Refuse drop rates outside [0, 1), naming the option."""
    check_probability(weight_drop, "--weight-drop")
    check_probability(locked_dropout, "--dropout-layers")
    check_probability(zoneout, "--zoneout")


_STEP_CELLS = {
    "gru": torch.gru_cell,
    "lstm": torch.lstm_cell,
    "rnn_tanh": torch.rnn_tanh_cell,
    "rnn_relu": torch.rnn_relu_cell,
}

# torch's whole-sequence kernels by RNNBase.mode, called with a weight list of our choosing.
_FUSED_KERNELS = {"GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


class _BackendChoice:
    """What RNN, GRU, LSTM and the scratch-only stacks add to torch's RNNBase: the backend choice, the
    scratch parameters and forward, and the regularizers (weight drop, locked dropout, zoneout)."""

    cell: str
    backend: str
    transition_depth: int
    weight_drop: float
    locked_dropout: float
    zoneout: float
    _scratch_cell: str | None = None  # the scratch-only stacks name their cell; the others take torch's mode
    _variant: dict = {}

    def __init__(
        self,
        *args,
        backend: str | None = None,
        transition_depth: int = 1,
        weight_drop: float = 0.0,
        locked_dropout: float = 0.0,
        zoneout: float = 0.0,
        **kwargs,
    ) -> None:
        """torch's positional and keyword arguments, then textrnn's keyword-only ones (the class docstring)."""
        backend = backend or ("scratch" if self._scratch_cell else "fused")
        if self._scratch_cell:  # validated before torch's constructor so that the refusal is the clear one
            check_backend(self._scratch_cell, backend, transition_depth, zoneout)
        super().__init__(*args, **kwargs)
        if self._scratch_cell and self.proj_size:
            raise TextrnnError(f"the {self._scratch_cell} cell has no proj_size")
        self._add_scratch_parameters(
            self._scratch_cell or self.mode.lower(),
            backend,
            transition_depth,
            weight_drop=weight_drop,
            locked_dropout=locked_dropout,
            zoneout=zoneout,
            **self._variant,
        )

    def _add_scratch_parameters(
        self,
        cell: str,
        backend: str,
        transition_depth: int,
        *,
        weight_drop: float = 0.0,
        locked_dropout: float = 0.0,
        zoneout: float = 0.0,
        peephole: bool = False,
        layernorm: bool = False,
        mogrify: tuple[int, int] = (0, 0),
    ) -> None:
        check_backend(cell, backend, transition_depth, zoneout)
        check_regularizers(weight_drop, locked_dropout, zoneout)
        self.cell = cell
        self.backend = backend
        self.transition_depth = transition_depth
        self.weight_drop = float(weight_drop)
        self.locked_dropout = float(locked_dropout)
        self.zoneout = float(zoneout)
        self._cudnn_layouts: dict[tuple, tuple[list[int], int]] = {}
        reference = self.weight_ih_l0
        factory = {"device": reference.device, "dtype": reference.dtype}
        state_width = self.proj_size or self.hidden_size
        gate_width = self.weight_hh_l0.shape[0]
        added, normalization = [], []
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
                added += self._mogrifier_shapes(layer, suffix, *mogrify)
                if layernorm:
                    normalization.append((f"weight_layernorm_ih_l{layer}{suffix}", (gate_width,), 1.0))
                    normalization.append((f"weight_layernorm_hh_l{layer}{suffix}", (gate_width,), 1.0))
                    if cell in LSTM_CELLS:
                        normalization.append((f"weight_layernorm_cell_l{layer}{suffix}", (self.hidden_size,), 1.0))
                        if self.bias:
                            normalization.append((f"bias_layernorm_cell_l{layer}{suffix}", (self.hidden_size,), 0.0))
        # The same uniform(-1/sqrt(H), 1/sqrt(H)) as torch gives its own parameters.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in added:
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory).uniform_(-bound, bound)))
        # Layer normalization starts as the identity map: gains 1, shifts 0 (as torch.nn.LayerNorm).
        for name, shape, value in normalization:
            self.register_parameter(name, nn.Parameter(torch.full(shape, value, **factory)))

    def _mogrifier_shapes(self, layer: int, suffix: str, rounds: int, rank: int) -> list[tuple[str, tuple]]:
        """Names and shapes of a Mogrifier layer's round matrices: Q (I, H) for rounds 1, 3, ..., R (H, I) for
        2, 4, ...; with ``rank`` k > 0 each is two factors, ``_left`` (out, k) and ``_right`` (k, in)."""
        width = self.input_size if layer == 0 else self.hidden_size * (2 if self.bidirectional else 1)
        shapes = []
        for index in range(rounds):
            out, into = (width, self.hidden_size) if index % 2 == 0 else (self.hidden_size, width)
            name = f"weight_mogrify{index}"
            if rank:
                shapes += [
                    (f"{name}_left_l{layer}{suffix}", (out, rank)),
                    (f"{name}_right_l{layer}{suffix}", (rank, into)),
                ]
            else:
                shapes.append((f"{name}_l{layer}{suffix}", (out, into)))
        return shapes

    def _mogrifier_factor(self, index: int, suffix: str):
        """Round ``index``'s matrix, or its ``(left, right)`` low-rank factors."""
        full = getattr(self, f"weight_mogrify{index}{suffix}", None)
        if full is not None:
            return full
        return getattr(self, f"weight_mogrify{index}_left{suffix}"), getattr(
            self, f"weight_mogrify{index}_right{suffix}"
        )

    def forward(self, x, state=None):
        """``x`` (T, B, I), or (B, T, I) when batch_first -> ``(out, state)`` with torch.nn's shapes and meaning."""
        check_backend(self.cell, self.backend, self.transition_depth, self.zoneout)
        if self.backend == "fused" and not self._regularizing():
            return super().forward(x, state)
        return self._own_forward(x, state)

    def _regularizing(self) -> bool:
        """Whether this call drops weights or applies locked dropout between layers (training mode only)."""
        return self.training and (self.weight_drop > 0 or (self.locked_dropout > 0 and self.num_layers > 1))

    def step(self, x, state=None):
        """One time step for incremental generation: ``x`` (B, I) -> ``(out (B, H), state)``.

        Plain unidirectional cells run torch's fused cell kernels (``gru_cell``, ``lstm_cell``,
        ...) layer by layer: for a single step they cost a fraction of a whole-sequence call
        (oneDNN's LSTM sets up a primitive per call). Other variants (and zoneout, whose
        evaluation-mode expectation those kernels lack) take ``forward`` over one step.
        Dropout is not applied (generation runs in eval mode).
        """
        cell_function = _STEP_CELLS.get(self.cell)
        if (
            cell_function is None
            or self.bidirectional
            or self.proj_size
            or self.transition_depth > 1
            or self.zoneout > 0
            or self.training
        ):
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
        if self.transition_depth > 1:
            text += f", transition_depth={self.transition_depth}"
        for name in ("weight_drop", "locked_dropout", "zoneout"):
            if getattr(self, name):
                text += f", {name}={getattr(self, name)}"
        return text

    def _own_forward(self, x, state):
        """textrnn's loop over layers: the scratch cells, or torch's kernels with dropped weights or locked dropout."""
        if isinstance(x, PackedSequence):
            raise TypeError(
                "the scratch backend (and weight drop or locked dropout in training) takes padded tensors, "
                "not a PackedSequence"
            )
        if x.dim() not in (2, 3):
            raise RuntimeError(f"input must have 2 (unbatched) or 3 dimensions, got {x.dim()}")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )
        with_cell = self.cell in LSTM_CELLS
        unbatched = x.dim() == 2
        # The cells work time-major, (T, B, I): each step then reads one contiguous block.
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        hidden, cell = self._initial_state(x, state, with_cell, unbatched)

        # All masks are drawn before any layer runs, weights first, in the same order on both backends.
        weights = self._layer_weights()
        masks = self._locked_masks(x)
        if self.backend == "fused" and not masks:
            flat = [weight for layer_weights in weights for weight in layer_weights]
            output, hidden, cell = self._fused(x, hidden, cell, flat, self.num_layers, self.input_size, self.dropout)
        else:
            output, hidden, cell = self._layer_by_layer(x, hidden, cell, weights, masks)
        if unbatched:
            output, hidden = output.squeeze(1), hidden.squeeze(1)
            cell = None if cell is None else cell.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((hidden, cell) if with_cell else hidden)

    def _layer_weights(self) -> list[list[Tensor]]:
        """torch's parameters per layer and direction (``w_ih, w_hh[, b_ih, b_hh][, w_hr]``), ``w_hh`` dropped in training.

        Read by name (not from ``_flat_weights``) so that ``torch.func.functional_call`` reaches them.
        """
        drop = self.weight_drop if self.training else 0.0
        return [
            [
                drop_connect(getattr(self, name), drop, True) if name.startswith("weight_hh") else getattr(self, name)
                for name in names
            ]
            for names in self._all_weights
        ]

    def _locked_masks(self, x: Tensor) -> list[Tensor]:
        """Locked-dropout masks (1, B, D * P) for the outputs of every layer but the last; none outside training."""
        if not (self.training and self.locked_dropout > 0):
            return []
        width = (2 if self.bidirectional else 1) * (self.proj_size or self.hidden_size)
        return [locked_mask(x, x.shape[1], width, self.locked_dropout).unsqueeze(0) for _ in range(self.num_layers - 1)]

    def _layer_by_layer(self, x, hidden, cell, weights, masks):
        """Run the stack one layer at a time, with (locked) dropout between layers -> (T, B, D * P), h, c or None."""
        directions = 2 if self.bidirectional else 1
        final_hidden, final_cell = [], []
        layer_input = x
        for layer in range(self.num_layers):
            span = slice(layer * directions, (layer + 1) * directions)
            if self.backend == "fused":
                layer_weights = [weight for direction_weights in weights[span] for weight in direction_weights]
                output, layer_hidden, layer_cell = self._fused(
                    layer_input,
                    hidden[span],
                    None if cell is None else cell[span],
                    layer_weights,
                    1,
                    layer_input.shape[-1],
                    0.0,
                )
                final_hidden += list(layer_hidden)
                final_cell += [] if layer_cell is None else list(layer_cell)
            else:
                outputs = []
                for direction in range(directions):
                    index = layer * directions + direction
                    output, last = self._scratch_layer(
                        layer_input,
                        hidden[index],
                        None if cell is None else cell[index],
                        layer,
                        direction,
                        weights[index],
                    )
                    outputs.append(output)
                    if cell is None:
                        final_hidden.append(last)
                    else:
                        final_hidden.append(last[0])
                        final_cell.append(last[1])
                output = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            layer_input = output
            if layer < self.num_layers - 1:
                if self.dropout > 0 and self.training:
                    layer_input = F.dropout(layer_input, self.dropout, training=True)
                if masks:
                    layer_input = layer_input * masks[layer]
        return layer_input, torch.stack(final_hidden), (torch.stack(final_cell) if final_cell else None)

    def _fused(self, inputs, hidden, cell, weights, num_layers: int, input_size: int, dropout: float):
        """torch's kernel over ``num_layers`` layers with ``weights`` in torch's order, time-major.

        ``inputs`` (T, B, I), ``hidden`` (and ``cell``) (num_layers * D, B, P) -> outputs (T, B, D * P), h, c or None.
        """
        weights = self._cudnn_views(weights, input_size, num_layers)
        options = (self.bias, num_layers, dropout, self.training, self.bidirectional, False)
        if cell is None:
            output, hidden = _FUSED_KERNELS[self.mode](inputs, hidden, weights, *options)
            return output, hidden, None
        output, hidden, cell = _VF.lstm(inputs, (hidden, cell), weights, *options)
        return output, hidden, cell

    def _cudnn_views(self, weights: list[Tensor], input_size: int, num_layers: int) -> list[Tensor]:
        """``weights`` as views into one fresh buffer laid out as cuDNN wants, when cuDNN will run them.

        cuDNN works on one flat weight buffer; given separate tensors (a dropped copy of
        ``W_hh``, say) it warns and compacts them on every call. The layout comes from cuDNN
        itself, once per shape: ``torch._cudnn_rnn_flatten_weight`` over placeholder tensors
        moves each into its place in a new buffer, and their offsets are the layout. The
        buffer is then built by concatenation, so gradients flow back to the weights.
        """
        first = weights[0]
        if not (first.is_cuda and torch.backends.cudnn.is_acceptable(first) and torch._use_cudnn_rnn_flatten_weight()):
            return weights
        key = (input_size, num_layers, first.dtype, first.device)
        layout = self._cudnn_layouts.get(key)
        if layout is None:
            from torch.backends.cudnn import rnn as cudnn_rnn

            directions = 2 if self.bidirectional else 1
            with torch.no_grad():
                placeholders = [torch.empty_like(weight, memory_format=torch.contiguous_format) for weight in weights]
                buffer = torch._cudnn_rnn_flatten_weight(
                    placeholders,
                    len(weights) // (num_layers * directions),
                    input_size,
                    cudnn_rnn.get_cudnn_mode(self.mode),
                    self.hidden_size,
                    self.proj_size,
                    num_layers,
                    self.batch_first,
                    self.bidirectional,
                )
                layout = ([placeholder.storage_offset() for placeholder in placeholders], buffer.numel())
            self._cudnn_layouts[key] = layout
        offsets, size = layout
        pieces, position = [], 0
        for index in sorted(range(len(weights)), key=offsets.__getitem__):
            if offsets[index] > position:  # cuDNN may pad between matrices
                pieces.append(first.new_zeros(offsets[index] - position))
            pieces.append(weights[index].reshape(-1))
            position = offsets[index] + weights[index].numel()
        if position < size:
            pieces.append(first.new_zeros(size - position))
        buffer = torch.cat(pieces)
        return [buffer[offset : offset + weight.numel()].view_as(weight) for offset, weight in zip(offsets, weights)]

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

    def _scratch_layer(self, inputs, hidden, cell, layer: int, direction: int, parameters: list[Tensor]):
        """One layer and direction over ``inputs`` (T, B, I) -> ``(outputs (T, B, H), final state)``.

        ``parameters`` are torch's of this layer and direction (``w_ih, w_hh[, b_ih, b_hh][, w_hr]``), as
        ``_layer_weights`` gives them; the scratch-only ones are read here.
        """
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        weights = parameters[:2]
        biases = parameters[2:4] if self.bias else [None, None]
        transition = [
            (getattr(self, f"weight_transition{depth}{suffix}"), getattr(self, f"bias_transition{depth}{suffix}", None))
            for depth in range(self.transition_depth - 1)
        ]
        options = {
            "transition": transition,
            "reverse": direction == 1,
            "zoneout": self.zoneout,
            "training": self.training,
        }
        if self.cell == "gru":
            return cells.gru_layer(inputs, hidden, *weights, *biases, **options)
        if self.cell in ("rnn_tanh", "rnn_relu"):
            return cells.rnn_layer(inputs, hidden, *weights, *biases, relu=self.cell == "rnn_relu", **options)
        if self.cell.startswith("layernorm_"):
            gains = [getattr(self, f"weight_layernorm_{part}{suffix}") for part in ("ih", "hh")]
            if self.cell == "layernorm_gru":
                return cells.layernorm_gru_layer(inputs, hidden, *weights, *biases, *gains, **options)
            cell_normalization = [
                getattr(self, f"weight_layernorm_cell{suffix}"),
                getattr(self, f"bias_layernorm_cell{suffix}", None),
            ]
            return cells.layernorm_lstm_layer(
                inputs, (hidden, cell), *weights, *biases, *gains, *cell_normalization, **options
            )
        if self.cell == "mogrifier":
            factors = [self._mogrifier_factor(index, suffix) for index in range(self.mogrify_rounds)]
            return cells.mogrifier_lstm_layer(inputs, (hidden, cell), *weights, *biases, factors, **options)
        if self.cell == "peephole_lstm":
            options["peephole"] = getattr(self, "weight_peephole" + suffix)
        elif self.proj_size > 0:
            options["weight_hr"] = parameters[-1]
        return cells.lstm_layer(inputs, (hidden, cell), *weights, *biases, **options)


_REGULARIZER_DOC = """
    Keyword-only, all textrnn's: ``backend`` ("fused" or "scratch"), ``transition_depth``
    (DT-RNN, scratch only), ``weight_drop`` (DropConnect on every ``W_hh``, one mask per
    call), ``locked_dropout`` (between layers, one mask per row shared over time; applied
    after torch's ``dropout`` when both are set) and ``zoneout`` (on ``h`` and ``c``,
    scratch only); the three rates are in [0, 1) and act in training mode only.
"""


class RNN(_BackendChoice, nn.RNN):
    """Elman RNN stack, ``torch.nn.RNN`` plus textrnn's keyword arguments.

    ``h_t = act(W_ih x_t + b_ih + W_hh s_{t-1} + b_hh)`` with ``act`` tanh or relu, where
    ``s_{t-1} = h_{t-1}`` unless ``transition_depth > 1`` (scratch only) puts a tanh MLP
    of ``transition_depth - 1`` layers between ``h_{t-1}`` and ``W_hh``.
    """

    __doc__ += _REGULARIZER_DOC


class GRU(_BackendChoice, nn.GRU):
    """GRU stack, ``torch.nn.GRU`` plus textrnn's keyword arguments.

    The equations are torch's (see ``textrnn.nn.cells.gru_step``); with
    ``transition_depth > 1`` (scratch only) the ``h`` that meets ``W_hh`` first goes
    through a tanh MLP, while the interpolation ``(1 - z) * n + z * h`` keeps the raw ``h``.
    """

    __doc__ += _REGULARIZER_DOC


class LSTM(_BackendChoice, nn.LSTM):
    """LSTM stack, ``torch.nn.LSTM`` (``proj_size`` included) plus textrnn's keyword arguments.

    The state is ``(h (L * D, B, H), c (L * D, B, H))``. With ``transition_depth > 1``
    (scratch only) the ``h`` that meets ``W_hh`` first goes through a tanh MLP; the cell
    ``c`` does not.
    """

    __doc__ += _REGULARIZER_DOC


class PeepholeLSTM(LSTM):
    """LSTM whose gates also see the cell (scratch only; see ``textrnn.nn.cells.peephole_lstm_step``).

    The input and forget gates see the previous cell ``c_{t-1}``, the output gate the new
    cell ``c_t``. The parameters are the LSTM's (same names and shapes, so an LSTM's
    ``state_dict`` loads with ``strict=False``) plus ``weight_peephole_l{layer}`` (3H):
    the diagonal peephole weights of the input, forget and output gates, in that order.
    """

    __doc__ += _REGULARIZER_DOC

    _scratch_cell = "peephole_lstm"
    _variant = {"peephole": True}


class LayerNormLSTM(LSTM):
    """Layer-normalized LSTM (Ba et al. 2016; scratch only; see ``textrnn.nn.cells.layernorm_lstm_step``).

    ``gates = LN(W_ih x) * g_ih + LN(W_hh h) * g_hh + b_ih + b_hh``, ``c' = f * c + i * g``,
    ``h' = o * tanh(LN(c') * g_c + b_c)``. The parameters are the LSTM's plus, per layer
    and direction, ``weight_layernorm_ih_l{k}`` and ``weight_layernorm_hh_l{k}`` (4H, the
    gains ``g_ih``, ``g_hh``), ``weight_layernorm_cell_l{k}`` and ``bias_layernorm_cell_l{k}``
    (H; no bias with ``bias=False``), initialised to 1 and 0.
    """

    __doc__ += _REGULARIZER_DOC

    _scratch_cell = "layernorm_lstm"
    _variant = {"layernorm": True}


class LayerNormGRU(GRU):
    """Layer-normalized GRU (scratch only; see ``textrnn.nn.cells.layernorm_gru_step``).

    torch's GRU with ``LN(W_ih x) * g_ih + b_ih`` and ``LN(W_hh h) * g_hh + b_hh`` in place of
    the two products. The parameters are the GRU's plus ``weight_layernorm_ih_l{k}`` and
    ``weight_layernorm_hh_l{k}`` (3H, the gains), initialised to 1.
    """

    __doc__ += _REGULARIZER_DOC

    _scratch_cell = "layernorm_gru"
    _variant = {"layernorm": True}


class MogrifierLSTM(LSTM):
    """Mogrifier LSTM (Melis, Kocisky and Blunsom 2020; scratch only; see ``textrnn.nn.cells.mogrify``).

    Before each step, the input and the previous state gate each other for ``mogrify_rounds`` rounds
    (``x = 2 sigmoid(Q h) * x``, then ``h = 2 sigmoid(R x) * h``, ...), then the plain LSTM step runs on them:
    with no rounds it is the LSTM. The parameters are the LSTM's plus, per layer and direction and round
    ``i``, ``weight_mogrify{i}_l{k}`` (Q: (I, H), R: (H, I)), or with ``mogrify_rank`` k > 0 the low-rank factors
    ``weight_mogrify{i}_left_l{k}`` and ``weight_mogrify{i}_right_l{k}``.
    """

    __doc__ += _REGULARIZER_DOC

    _scratch_cell = "mogrifier"

    def __init__(self, *args, mogrify_rounds: int = 5, mogrify_rank: int = 0, **kwargs) -> None:
        if mogrify_rounds < 0 or mogrify_rank < 0:
            raise TextrnnError(
                f"--mogrify-rounds and --mogrify-rank must be non-negative, got {mogrify_rounds} and {mogrify_rank}"
            )
        object.__setattr__(self, "_variant", {"mogrify": (mogrify_rounds, mogrify_rank)})
        object.__setattr__(self, "mogrify_rounds", mogrify_rounds)
        object.__setattr__(self, "mogrify_rank", mogrify_rank)
        super().__init__(*args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mogrify_rounds={self.mogrify_rounds}, mogrify_rank={self.mogrify_rank}"


_ENCODER_CLASSES = {
    "gru": GRU,
    "lstm": LSTM,
    "peephole_lstm": PeepholeLSTM,
    "layernorm_lstm": LayerNormLSTM,
    "layernorm_gru": LayerNormGRU,
    "mogrifier": MogrifierLSTM,
}


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
    weight_drop: float = 0.0,
    locked_dropout: float = 0.0,
    zoneout: float = 0.0,
    mogrify_rounds: int = 5,
    mogrify_rank: int = 0,
    block: str = "residual",
    conv_kernel: int = 0,
) -> nn.Module:
    """The batch-first encoder of the models: ``(B, T, input_size) -> (B, T, D * H)`` and the state.

    ``dropout`` (torch's, a new mask per step) and ``locked_dropout`` (one mask per row
    shared over time) apply between layers only (none with one layer); ``weight_drop``
    drops entries of every ``W_hh``; ``zoneout`` needs the scratch backend. ``mogrify_*`` shape the
    Mogrifier LSTM, ``block`` and ``conv_kernel`` the minGRU / minLSTM stacks (``textrnn.nn.minimal``).
    Raises ``TextrnnError`` for an unknown cell or backend, rates outside [0, 1) and variants
    the chosen backend or cell does not have.
    """
    if cell not in CELLS:
        raise TextrnnError(f"unknown cell {cell!r}: choose one of {', '.join(CELLS)}")
    check_backend(cell, backend, transition_depth, zoneout)
    check_regularizers(weight_drop, locked_dropout, zoneout)
    check_minimal(cell, weight_drop, bidirectional)
    if cell in MINIMAL_CELLS:
        between = {"dropout": dropout if num_layers > 1 else 0.0, "locked_dropout": locked_dropout}
        return MinimalRNN(cell, input_size, hidden_size, num_layers, block=block, conv_kernel=conv_kernel, **between)
    options = {
        "num_layers": num_layers,
        "batch_first": True,
        "dropout": dropout if num_layers > 1 else 0.0,
        "bidirectional": bidirectional,
        "backend": backend,
        "transition_depth": transition_depth,
        "weight_drop": weight_drop,
        "locked_dropout": locked_dropout if num_layers > 1 else 0.0,
        "zoneout": zoneout,
    }
    if cell == "mogrifier":
        options.update(mogrify_rounds=mogrify_rounds, mogrify_rank=mogrify_rank)
    if cell in _ENCODER_CLASSES:
        return _ENCODER_CLASSES[cell](input_size, hidden_size, **options)
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
