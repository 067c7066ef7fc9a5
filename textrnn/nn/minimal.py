"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): recurrent layers whose gates read the
input only, so that a whole chunk is one matrix product and a scan, not T small recurrent products.

Equations (B batch, T time steps, H units; ``g`` keeps the state positive so that it can be scanned in log
space, ``g(x) = x + 0.5`` for x >= 0 and ``sigmoid(x)`` below)::

    minGRU:   z = sigmoid(W_z x)        h~ = g(W_h x)     h_t = (1 - z) * h_{t-1} + z * h~
    minLSTM:  f = sigmoid(W_f x)   i = sigmoid(W_i x)   h~ = g(W_h x)
              f' = f / (f + i)     i' = i / (f + i)      h_t = f' * h_{t-1} + i' * h~

Both are ``h_t = a_t * h_{t-1} + b_t`` with positive ``a`` and ``b`` known for every step in advance, so no
matrix product waits on the previous step. ``log_scan`` computes the whole chunk at once with a cumulative sum
and ``logcumsumexp`` (the log-space parallel scan of Heinsen 2023), starting from the carried state: one chunk
of 2T steps gives what two chunks of T give with the state carried between them. That is the form for a GPU.
On a CPU ``linear_scan`` runs the same recurrence as one fused multiply-add per step with a hand-written
backward pass: torch's ``logcumsumexp`` costs more there than the layer's whole matrix product (on two cores,
forward and backward, about 130 ns per element against 11 for ``linear_scan`` and 36 for the product;
``scripts/bench_scan.py``, docs/results.md).
Both are exact and stable in fp32: ``a`` lies in (0, 1). ``step`` is the recurrence one token at a time, in
O(1), for sampling and serving.

``MinimalRNN`` stacks these layers in one of two shapes (``block``):

- ``"plain"``: layer on layer, as in the paper's own experiments;
- ``"residual"``: the pre-norm residual block of the public implementations (and of Transformers):
  ``x + conv(x)`` (a short causal depthwise convolution, when ``conv_kernel`` > 0), then
  ``x + rnn(LN(x))``, then ``x + MLP(LN(x))``, with a final LayerNorm. The convolution's last
  ``conv_kernel - 1`` inputs are part of the carried state, so chunks still join exactly.

The state is ``h`` (L, B, H), or ``(h, conv)`` with ``conv`` (L, B, (K - 1) * H) when there is a convolution:
batch on dimension 1, like torch's RNNs, so every tool that slices, gathers or exports states takes it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MINIMAL_CELLS = ("mingru", "minlstm")
BLOCKS = ("plain", "residual")
MLP_RATIO = 4  # the residual block's MLP: H -> 4H -> H, as in Transformers and the public minGRU models
SCAN_BLOCK = 128  # steps scanned at once; longer chunks are scanned block after block (same result, better fp32)


def g(x: Tensor) -> Tensor:
    """The positive activation of the candidate state: ``x + 0.5`` for x >= 0, ``sigmoid(x)`` below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log(g(x))``, computed without forming ``g(x)`` for negative x."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def log_scan(log_a: Tensor, log_b: Tensor, h0: Tensor | None) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` over a chunk, from ``h0``, in log space.

    ``log_a``, ``log_b`` (B, T, H) are the logs of the positive coefficients and values; ``h0`` (B, H) the state
    before the chunk (None: zeros) -> ``h`` (B, T, H). Computed in fp32 at least (bf16 and fp16 inputs too).
    """
    dtype = torch.promote_types(log_a.dtype, torch.float32)
    log_a, log_b = log_a.to(dtype), log_b.to(dtype)
    outputs = []
    for start in range(0, log_a.shape[1], SCAN_BLOCK):
        a_star = torch.cumsum(log_a[:, start : start + SCAN_BLOCK], dim=1)  # log of the products a_1 ... a_t
        values = log_b[:, start : start + SCAN_BLOCK] - a_star
        if h0 is not None:  # h0 joins as a value before the first step, where the product is still 1
            floor = torch.finfo(dtype).tiny
            values = torch.cat([torch.log(h0.to(dtype).clamp_min(floor)).unsqueeze(1), values], dim=1)
            log_h = a_star + torch.logcumsumexp(values, dim=1)[:, 1:]
        else:
            log_h = a_star + torch.logcumsumexp(values, dim=1)
        block = torch.exp(log_h)
        outputs.append(block)
        h0 = block[:, -1]
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


class _LinearScan(torch.autograd.Function):
    """``h_t = a_t * h_{t-1} + b_t`` step after step over time-major ``a``, ``b`` (T, B, H) from ``h0`` (B, H),
    with its backward pass written out: the adjoint ``g_t = dL/dh_t + a_{t+1} g_{t+1}`` runs backwards the same
    way, and then ``dL/db = g``, ``dL/da = g * h_{t-1}``, ``dL/dh0 = a_1 g_1`` at once."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        out = torch.empty_like(b)
        h = h0
        for t in range(b.shape[0]):
            torch.addcmul(b[t], a[t], h, out=out[t])
            h = out[t]
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        a, out, h0 = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        adjoint = torch.empty_like(grad_out)
        adjoint[-1] = grad_out[-1]
        for t in range(grad_out.shape[0] - 2, -1, -1):
            torch.addcmul(grad_out[t], a[t + 1], adjoint[t + 1], out=adjoint[t])
        previous = torch.cat([h0.unsqueeze(0), out[:-1]])
        return adjoint * previous, adjoint, a[0] * adjoint[0]


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` over a chunk, one fused step at a time: ``a``, ``b`` (B, T, H), ``h0`` (B, H)
    or None (zeros) -> ``h`` (B, T, H). The recurrence ``log_scan`` computes, for a CPU."""
    h0 = a.new_zeros(a.shape[0], a.shape[2]) if h0 is None else h0.to(a.dtype)
    return _LinearScan.apply(a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous(), h0).transpose(0, 1)


class MinimalLayer(nn.Module):
    """One minGRU or minLSTM layer: ``(B, T, I) -> (B, T, H)`` and its final state (B, H).

    ``projection`` holds the gates stacked: ``(hidden, gate)`` for minGRU (2H rows), ``(forget, input,
    hidden)`` for minLSTM (3H rows).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int):
        super().__init__()
        if cell not in MINIMAL_CELLS:
            raise ValueError(f"unknown minimal cell {cell!r}")
        self.cell = cell
        self.projection = nn.Linear(input_size, (2 if cell == "mingru" else 3) * hidden_size)

    def log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` (..., H) of the recurrence for inputs ``x`` (..., I)."""
        if self.cell == "mingru":
            hidden, gate = self.projection(x).chunk(2, dim=-1)
            return -F.softplus(gate), -F.softplus(-gate) + log_g(hidden)
        forget, input_gate, hidden = self.projection(x).chunk(3, dim=-1)
        difference = F.softplus(-forget) - F.softplus(-input_gate)
        return -F.softplus(difference), -F.softplus(-difference) + log_g(hidden)

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` (..., H) of the recurrence for inputs ``x`` (..., I), computed directly."""
        if self.cell == "mingru":
            hidden, gate = self.projection(x).chunk(2, dim=-1)
            update = torch.sigmoid(gate)
            return 1 - update, update * g(hidden)
        forget, input_gate, hidden = self.projection(x).chunk(3, dim=-1)
        forget, input_gate = torch.sigmoid(forget), torch.sigmoid(input_gate)
        total = forget + input_gate
        return forget / total, input_gate / total * g(hidden)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` (B, T, I), ``h0`` (B, H) or None -> outputs (B, T, H), final state (B, H)."""
        if x.is_cuda:
            h = log_scan(*self.log_coefficients(x), h0).to(x.dtype)
        else:
            dtype = torch.promote_types(x.dtype, torch.float32)  # the recurrence in fp32 at least
            a, b = self.coefficients(x)
            h = linear_scan(a.to(dtype), b.to(dtype), h0).to(x.dtype)
        return h, h[:, -1]

    def step(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """One step: ``x`` (B, I), ``h`` (B, H) or None -> the new ``h`` (B, H), the scan's recurrence in O(1)."""
        a, b = self.coefficients(x)
        return b if h is None else torch.addcmul(b, a, h)


class CausalConvolution(nn.Module):
    """A short causal depthwise convolution over time, ``(B, T, H) -> (B, T, H)``: each output sees its own
    input and the ``kernel - 1`` before it (zeros before the first chunk, the carried inputs after)."""

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(width, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(width))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # torch's Conv1d initialisation

    def forward(self, x: Tensor, past: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x`` (B, T, H), ``past`` (B, (K - 1) * H) or None -> output (B, T, H), the new ``past``."""
        batch, _, width = x.shape
        before = x.new_zeros(batch, self.kernel - 1, width) if past is None else past.view(batch, -1, width)
        joined = torch.cat([before, x], dim=1)  # (B, K - 1 + T, H)
        out = F.conv1d(joined.transpose(1, 2), self.weight, self.bias, groups=width).transpose(1, 2)
        return out, joined[:, joined.shape[1] - (self.kernel - 1) :].reshape(batch, -1)


class ResidualBlock(nn.Module):
    """``x + conv(x)``, ``x + rnn(LN(x))``, ``x + MLP(LN(x))``: the pre-norm residual shape of one layer."""

    def __init__(self, cell: str, width: int, conv_kernel: int):
        super().__init__()
        self.conv = CausalConvolution(width, conv_kernel) if conv_kernel > 0 else None
        self.norm = nn.LayerNorm(width)
        self.rnn = MinimalLayer(cell, width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, MLP_RATIO * width), nn.GELU(), nn.Linear(MLP_RATIO * width, width))

    def forward(self, x: Tensor, h: Tensor | None, past: Tensor | None):
        """``x`` (B, T, H) -> ``(x, h (B, H), past)``."""
        if self.conv is not None:
            mixed, past = self.conv(x, past)
            x = x + mixed
        out, h = self.rnn(self.norm(x), h)
        x = x + out
        return x + self.mlp(self.mlp_norm(x)), h, past

    def step(self, x: Tensor, h: Tensor | None, past: Tensor | None):
        """``x`` (B, H) -> ``(x, h, past)`` for one token."""
        if self.conv is not None:
            mixed, past = self.conv(x.unsqueeze(1), past)
            x = x + mixed.squeeze(1)
        h = self.rnn.step(self.norm(x), h)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), h, past


class MinimalRNN(nn.Module):
    """A batch-first stack of minGRU or minLSTM layers with the interface of textrnn's encoders:
    ``forward(x (B, T, I), state) -> (out (B, T, H), state)`` and ``step(x (B, I), state)``.

    ``block`` is ``"plain"`` or ``"residual"`` (the module docstring); ``conv_kernel`` (residual only) the
    width of the causal convolution, 0 for none. ``dropout`` (a new mask per element) and ``locked_dropout``
    (one mask per row, shared over time) apply between layers, in training only.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        block: str = "residual",
        conv_kernel: int = 0,
        dropout: float = 0.0,
        locked_dropout: float = 0.0,
    ):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}")
        if block == "plain" and conv_kernel:
            raise ValueError("the causal convolution belongs to the residual block")
        self.cell, self.block, self.conv_kernel = cell, block, conv_kernel
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.dropout, self.locked_dropout = dropout, locked_dropout
        if block == "plain":
            sizes = [input_size] + [hidden_size] * (num_layers - 1)
            self.layers = nn.ModuleList(MinimalLayer(cell, size, hidden_size) for size in sizes)
            self.input_projection = self.final_norm = None
        else:
            self.input_projection = nn.Linear(input_size, hidden_size) if input_size != hidden_size else None
            self.layers = nn.ModuleList(ResidualBlock(cell, hidden_size, conv_kernel) for _ in range(num_layers))
            self.final_norm = nn.LayerNorm(hidden_size)

    def _split(self, state):
        """The carried state -> per layer ``(h (B, H) or None, past or None)``."""
        if state is None:
            return [(None, None)] * self.num_layers
        hidden, past = state if self.conv_kernel else (state, None)
        return [(hidden[layer], None if past is None else past[layer]) for layer in range(self.num_layers)]

    def _joined(self, parts):
        hidden = torch.stack([h for h, _ in parts])
        return (hidden, torch.stack([past for _, past in parts])) if self.conv_kernel else hidden

    def _between_layers(self, x: Tensor, layer: int, masks: list[Tensor]) -> Tensor:
        if layer == self.num_layers - 1 or not self.training:
            return x
        if self.dropout > 0:
            x = F.dropout(x, self.dropout, training=True)
        return x * masks[layer] if masks else x

    def forward(self, x: Tensor, state=None):
        """``x`` (B, T, I), ``state`` as carried (None: zeros) -> ``(out (B, T, H), state)``."""
        if x.shape[1] == 1 and not self.training:  # one step: the recurrence itself (an exported step graph's)
            out, state = self.step(x[:, 0], state)
            return out.unsqueeze(1), state
        masks = self._locked_masks(x)
        if self.input_projection is not None:
            x = self.input_projection(x)
        parts = []
        for layer, (h, past) in enumerate(self._split(state)):
            if self.block == "plain":
                x, h = self.layers[layer](x, h)
            else:
                x, h, past = self.layers[layer](x, h, past)
            parts.append((h, past))
            x = self._between_layers(x, layer, masks)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, self._joined(parts)

    def step(self, x: Tensor, state=None):
        """One token for generation: ``x`` (B, I) -> ``(out (B, H), state)``; no dropout (eval mode)."""
        if self.input_projection is not None:
            x = self.input_projection(x)
        parts = []
        for layer, (h, past) in enumerate(self._split(state)):
            if self.block == "plain":
                x = h = self.layers[layer].step(x, h)
            else:
                x, h, past = self.layers[layer].step(x, h, past)
            parts.append((h, past))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, self._joined(parts)

    def _locked_masks(self, x: Tensor) -> list[Tensor]:
        """One locked-dropout mask (B, 1, H) per gap between layers; none outside training."""
        if not (self.training and self.locked_dropout > 0):
            return []
        keep = 1.0 - self.locked_dropout
        shape = (x.shape[0], 1, self.hidden_size)
        return [x.new_empty(shape).bernoulli_(keep) / keep for _ in range(self.num_layers - 1)]

    def extra_repr(self) -> str:
        return (
            f"cell={self.cell}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, block={self.block}, "
            f"conv_kernel={self.conv_kernel}, dropout={self.dropout}, locked_dropout={self.locked_dropout}"
        )
