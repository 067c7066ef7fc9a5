"""Recurrent cells written from their equations, and the loop that runs one layer over time.

Shapes: B batch, T time steps, I input features, H hidden units (P for a projected LSTM
output). Every ``*_layer`` function takes time-major input ``(T, B, I)`` and its
layer's parameters under their ``torch.nn`` meaning, and returns ``(outputs (T, B, H),
final state)``; ``reverse=True`` reads the sequence from its last step to its first
(the backward direction of a bidirectional layer) while ``outputs[t]`` stays aligned
with ``inputs[t]``.

Speed comes from the layout and from doing the calculus by hand, never from changing
the equations:

- the input projection ``W_ih x_t + b_ih`` of all T steps is one matrix product over
  the whole sequence, done before the loop;
- each step is one matrix product for all gates (``W_hh`` holds the gates stacked, in
  torch's order) followed by a handful of elementwise ops;
- when the two biases are simply added (RNN, LSTM), ``b_hh`` is folded into the
  input projection once, so the step's matrix product adds the projected input for free
  (``torch.addmm``);
- the plain cells (and the peephole LSTM) backpropagate through time by hand (see
  ``_LSTMLayer``) instead of through an autograd graph of T * (a dozen) nodes.

Deep transition (DT-RNN, Pascanu et al. 2014, "How to construct deep recurrent neural
networks"): ``transition`` holds ``transition_depth - 1`` layers ``(W, b)`` of width H.
At each step the previous hidden state first goes through that MLP,
``s = tanh(W_k ... tanh(W_1 h_{t-1} + b_1) ... + b_k)``, and ``s`` takes the place of
``h_{t-1}`` where the cell multiplies by ``W_hh``. The paths that gated cells keep
linear on purpose stay untouched: the GRU still interpolates with the raw ``h_{t-1}``
and the LSTM's cell ``c_{t-1}`` bypasses the MLP. An empty ``transition`` is the plain
cell.

Zoneout (Krueger et al. 2017, "Zoneout: regularizing RNNs by randomly preserving hidden
activations"): with rate z, in training each unit of ``h`` (and of the LSTM's ``c``) keeps
its previous value with probability z, drawn anew per step, unit and row; in evaluation
every unit takes the expectation ``z * previous + (1 - z) * new``. z = 0 is the plain cell.
The LSTM's new ``h`` is computed from the new ``c`` before either is zoned out, as in the
paper. Zoneout runs through autograd (the hand-written backward passes do not model it).

Layer normalization in the cell (Ba et al. 2016, "Layer normalization"): the input and
recurrent products are normalized separately over all gates, ``LN(W_ih x) * g_ih + LN(W_hh h)
* g_hh + b_ih + b_hh``, the biases acting as the normalization's shift; the LSTM also
normalizes its new cell before the output tanh, ``h = o * tanh(LN(c) * g_c + b_c)``, while
the recurrence carries the raw ``c``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

Transition = Sequence[tuple[Tensor, Tensor | None]]
"""The DT-RNN transition MLP of one layer and direction: ``(weight (H, H), bias (H) or None)`` per extra layer."""


def deep_transition(hidden: Tensor, transition: Transition) -> Tensor:
    """``hidden`` (B, H) through the transition MLP (tanh layers); unchanged when ``transition`` is empty."""
    for weight, bias in transition:
        hidden = torch.tanh(F.linear(hidden, weight, bias))
    return hidden


Keep = Tensor | float | None
"""Zoneout of one state over a layer call: (T, B, H) masks (1: keep the previous value), the rate (eval), or None."""


def zoneout_keep(state: Tensor, length: int, zoneout: float, training: bool) -> Keep:
    """Which units of ``state`` (B, H) keep their previous value at each of ``length`` steps.

    Training: 0/1 masks (T, B, H), each 1 with probability ``zoneout`` (drawn from torch's
    generator of ``state``'s device, so a saved RNG state replays them). Evaluation: the
    rate itself, which ``zoneout_update`` turns into the expectation. None without zoneout.
    """
    if zoneout == 0:
        return None
    if not training:
        return float(zoneout)
    return state.new_empty((length, *state.shape)).bernoulli_(zoneout)


def zoneout_update(previous: Tensor, new: Tensor, keep: Keep, step: int) -> Tensor:
    """``keep * previous + (1 - keep) * new`` with the step's mask (or the rate, or nothing to keep)."""
    if keep is None:
        return new
    # (new comes back in a lower precision under autocast; the carried state keeps its own.)
    return torch.lerp(new.to(previous.dtype), previous, keep if isinstance(keep, float) else keep[step])


# Single steps. ``projected`` is the step's precomputed input projection (B, G) where G
# is the gate width; ``weight_hh_t`` is ``W_hh`` transposed (H, G), copied once per layer
# call into its own memory: MKL multiplies (B, H) by a contiguous (H, G) about 1.4x faster
# than by the transposed view of (G, H) with 2 threads.


def rnn_step(projected: Tensor, hidden: Tensor, weight_hh_t: Tensor, relu: bool) -> Tensor:
    """Elman cell: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, both biases already in ``projected``."""
    preactivation = torch.addmm(projected, hidden, weight_hh_t)
    return torch.relu(preactivation) if relu else torch.tanh(preactivation)


def gru_step(
    projected: Tensor, hidden: Tensor, recurrent_input: Tensor, weight_hh_t: Tensor, bias_hh: Tensor | None
) -> Tensor:
    """GRU in PyTorch's convention (gates r, z, n stacked in that order)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    ``projected`` (B, 3H) holds ``W_i* x + b_i*``; ``recurrent_input`` is the ``h`` that
    meets ``W_hh`` (``hidden`` itself unless a deep transition transformed it), ``hidden`` the
    ``h`` of the interpolation. ``b_hn`` stays out of the input projection because ``r``
    multiplies it.
    """
    if bias_hh is None:
        recurrent = torch.mm(recurrent_input, weight_hh_t)
    else:
        recurrent = torch.addmm(bias_hh, recurrent_input, weight_hh_t)
    hidden_size = hidden.shape[1]
    projected_reset_update, projected_new = projected.split([2 * hidden_size, hidden_size], 1)
    recurrent_reset_update, recurrent_new = recurrent.split([2 * hidden_size, hidden_size], 1)
    reset, update = torch.sigmoid(projected_reset_update + recurrent_reset_update).chunk(2, 1)
    new = torch.tanh(torch.addcmul(projected_new, reset, recurrent_new))
    # lerp(n, h, z) = n + z * (h - n) = (1 - z) * n + z * h, in one op instead of three.
    return torch.lerp(new.to(hidden.dtype), hidden, update.to(hidden.dtype))  # dtypes differ under autocast


def lstm_step(
    projected: Tensor, hidden: Tensor, cell: Tensor, weight_hh_t: Tensor, weight_hr_t: Tensor | None
) -> tuple[Tensor, Tensor]:
    """LSTM with gates i, f, g, o stacked in torch's order::

        i = sigmoid(W_ii x + W_hi h + b_i)      f = sigmoid(W_if x + W_hf h + b_f)
        g = tanh(W_ig x + W_hg h + b_g)         o = sigmoid(W_io x + W_ho h + b_o)
        c' = f * c + i * g                      h' = o * tanh(c')   (then W_hr h' with a projection)

    ``projected`` (B, 4H) already holds both biases; ``hidden`` is the ``h`` that meets
    ``W_hh`` (the deep transition's output when there is one).
    """
    gates = torch.addmm(projected, hidden, weight_hh_t)
    hidden_size = cell.shape[1]
    # One sigmoid over all four gates (g's share is wasted) costs less than three
    # separate sigmoid calls on a CPU, where the per-op overhead dominates at these sizes.
    input_gate, forget_gate, _, output_gate = torch.sigmoid(gates).chunk(4, 1)
    candidate = torch.tanh(gates[:, 2 * hidden_size : 3 * hidden_size])
    cell = torch.addcmul(forget_gate * cell, input_gate, candidate)
    hidden = output_gate * torch.tanh(cell)
    if weight_hr_t is not None:
        hidden = torch.mm(hidden, weight_hr_t)
    return hidden, cell


def peephole_lstm_step(
    projected: Tensor, hidden: Tensor, cell: Tensor, weight_hh_t: Tensor, peephole: Tensor
) -> tuple[Tensor, Tensor]:
    """Peephole LSTM (Gers & Schmidhuber 2000, as in Graves 2013): the gates also see the cell::

        i = sigmoid(W_ii x + W_hi h + b_i + p_i * c)
        f = sigmoid(W_if x + W_hf h + b_f + p_f * c)
        g = tanh(W_ig x + W_hg h + b_g)
        c' = f * c + i * g
        o = sigmoid(W_io x + W_ho h + b_o + p_o * c')
        h' = o * tanh(c')

    The input and forget gates look at the previous cell ``c_{t-1}``; the output gate
    looks at the new cell ``c_t``, which exists by the time it is needed.
    ``peephole`` (3H) holds the diagonal peephole weights ``p_i, p_f, p_o`` in that order.
    """
    gates = torch.addmm(projected, hidden, weight_hh_t)
    input_pre, forget_pre, candidate_pre, output_pre = gates.chunk(4, 1)
    peephole_input, peephole_forget, peephole_output = peephole.chunk(3)
    input_gate = torch.sigmoid(torch.addcmul(input_pre, peephole_input, cell))
    forget_gate = torch.sigmoid(torch.addcmul(forget_pre, peephole_forget, cell))
    cell = torch.addcmul(forget_gate * cell, input_gate, torch.tanh(candidate_pre))
    output_gate = torch.sigmoid(torch.addcmul(output_pre, peephole_output, cell))
    return output_gate * torch.tanh(cell), cell


# Layers: the loop over time around one step. Two ways of differentiating it give the
# same numbers. Autograd through the steps above handles every variant (deep
# transitions, projections, mixed precision, double backward). For the plain cells and
# the peephole LSTM, hand-written backpropagation through time does what cuDNN and
# oneDNN do: per step one matrix product back to h_{t-1} and a few elementwise ops with
# no graph to build, and the weight gradient of all T steps as one large matrix product
# at the end instead of T thin ones (inner dimension B) accumulated one by one.
# ``HANDWRITTEN_BACKWARD = False`` sends every cell through autograd (the tests run both
# paths; ``scripts/bench_cells.py --autograd`` measures what the hand-written one gains).

HANDWRITTEN_BACKWARD = True


def _time_order(length: int, reverse: bool) -> range:
    return range(length - 1, -1, -1) if reverse else range(length)


def _sum_biases(bias_ih: Tensor | None, bias_hh: Tensor | None) -> Tensor | None:
    return None if bias_ih is None else bias_ih + bias_hh


def _use_handwritten(inputs: Tensor, transition: Transition, zoneout: float = 0.0) -> bool:
    # Autocast changes dtypes op by op, which the hand-written path's preallocated
    # buffers cannot follow; mixed precision takes the autograd path, and so do the
    # variants the hand-written passes do not model (deep transition, zoneout).
    return HANDWRITTEN_BACKWARD and not transition and not zoneout and not torch.is_autocast_enabled(inputs.device.type)


def _tanh(values: Tensor, out: Tensor) -> Tensor:
    """``tanh(values)`` written into ``out`` (which may be ``values``).

    On a CPU as ``2 sigmoid(2x) - 1``: ATen's float tanh runs about 5x slower than its
    sigmoid on the 2-core AMD EPYC (AVX-512) we measure on (25 vs 4.5 us for 32 x 256
    values; 8.8 vs 5.9 us on a Xeon), and the LSTM needs two per step.
    """
    if values.device.type != "cpu":
        return torch.tanh(values, out=out)
    return torch.mul(values, 2, out=out).sigmoid_().mul_(2).sub_(1)


def _previous(initial: Tensor, outputs: Tensor, reverse: bool) -> Tensor:
    """The state each step started from (T, B, H): ``initial``, then ``outputs`` shifted by one in reading order."""
    if reverse:
        return torch.cat([outputs[1:], initial.unsqueeze(0)])
    return torch.cat([initial.unsqueeze(0), outputs[:-1]])


def _weight_gradient(gate_gradients: Tensor, previous: Tensor) -> Tensor:
    """``sum_t dG_t^T h_{t-1}``, the gradient of ``W_hh``, as one product: (T, B, G), (T, B, H) -> (G, H)."""
    return gate_gradients.flatten(0, 1).t().mm(previous.flatten(0, 1))


# The backward passes below split each step's derivative into what depends on the
# gradient arriving from the future (only known inside the reverse loop) and what
# depends on the forward activations alone. The latter is computed for all T steps at
# once before the loop, in a few large elementwise ops, which leaves the loop itself
# with a handful of small ops and the one matrix product per step.


class _ElmanLayer(torch.autograd.Function):
    """``h_t = act(p_t + W_hh h_{t-1})`` over ``projected`` p (T, B, H), which holds both biases."""

    @staticmethod
    def forward(ctx, projected, hidden, weight_hh, relu: bool, reverse: bool):
        outputs = projected.new_empty(projected.shape)
        initial, weight_hh_t = hidden, weight_hh.t().contiguous()
        for step in _time_order(len(projected), reverse):
            hidden = torch.addmm(projected[step], hidden, weight_hh_t, out=outputs[step])
            hidden.relu_() if relu else _tanh(hidden, out=hidden)
        ctx.relu, ctx.reverse = relu, reverse
        ctx.save_for_backward(initial, weight_hh, outputs)
        return outputs, hidden.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_hidden):
        initial, weight_hh, outputs = ctx.saved_tensors
        # act'(preactivation) from the output: relu' = [h > 0], tanh' = 1 - h^2.
        derivative = (outputs > 0).to(outputs.dtype) if ctx.relu else 1 - outputs * outputs
        grad_preactivations = torch.empty_like(outputs)
        carry = grad_hidden
        for step in _time_order(len(outputs), not ctx.reverse):
            grad = torch.add(carry, grad_outputs[step], out=grad_preactivations[step]).mul_(derivative[step])
            carry = grad.mm(weight_hh)
        grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_weight = _weight_gradient(grad_preactivations, _previous(initial, outputs, ctx.reverse))
        return grad_preactivations, carry, grad_weight, None, None


class _GRULayer(torch.autograd.Function):
    """The GRU of ``gru_step`` over ``projected`` (T, B, 3H) = ``W_ih x_t + b_ih``."""

    @staticmethod
    def forward(ctx, projected, hidden, weight_hh, bias_hh, reverse: bool):
        hidden_size = hidden.shape[-1]
        gates = projected.new_empty(projected.shape)  # r, z, n after their nonlinearities
        recurrent = projected.new_empty(projected.shape)  # W_hh h_{t-1} + b_hh
        outputs = projected.new_empty(projected.shape[:-1] + (hidden_size,))
        initial, weight_hh_t = hidden, weight_hh.t().contiguous()
        for step in _time_order(len(projected), reverse):
            step_recurrent = recurrent[step]
            if bias_hh is None:
                torch.mm(hidden, weight_hh_t, out=step_recurrent)
            else:
                torch.addmm(bias_hh, hidden, weight_hh_t, out=step_recurrent)
            step_projected, step_gates = projected[step], gates[step]
            reset_update = step_gates[:, : 2 * hidden_size]
            torch.add(step_projected[:, : 2 * hidden_size], step_recurrent[:, : 2 * hidden_size], out=reset_update)
            reset, update = reset_update.sigmoid_().chunk(2, 1)
            new = step_gates[:, 2 * hidden_size :]
            torch.addcmul(step_projected[:, 2 * hidden_size :], reset, step_recurrent[:, 2 * hidden_size :], out=new)
            hidden = torch.lerp(_tanh(new, out=new), hidden, update, out=outputs[step])
        ctx.reverse, ctx.has_bias = reverse, bias_hh is not None
        ctx.save_for_backward(initial, weight_hh, gates, recurrent, outputs)
        return outputs, hidden.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_hidden):
        initial, weight_hh, gates, recurrent, outputs = ctx.saved_tensors
        hidden_size = outputs.shape[-1]
        reset, update, new = gates.chunk(3, -1)
        previous = _previous(initial, outputs, ctx.reverse)
        # With dh the gradient of h' = n + z (h - n), every gradient of the step is dh times
        # a factor known from the forward pass:
        #   candidate preactivation:  dh (1 - z) (1 - n^2)                    = dh * new_factor
        #   reset preactivation:      dh new_factor (W_hn h + b_hn) r (1 - r)
        #   update preactivation:     dh (h - n) z (1 - z)
        #   W_hn h + b_hn:            dh new_factor r
        # (In place where possible: at these sizes, touching new memory costs as much as the arithmetic.)
        keep = 1 - update
        new_factor = torch.mul(new, new).neg_().add_(1).mul_(keep)
        factors = torch.empty_like(recurrent).unflatten(-1, (3, hidden_size))
        torch.mul(new_factor, recurrent[..., 2 * hidden_size :], out=factors[..., 0, :]).mul_(reset).mul_(1 - reset)
        torch.sub(previous, new, out=factors[..., 1, :]).mul_(update).mul_(keep)
        torch.mul(new_factor, reset, out=factors[..., 2, :])
        grad_recurrent = torch.empty_like(recurrent)  # of W_hh h + b_hh, (T, B, 3H)
        grad_recurrent_split = grad_recurrent.unflatten(-1, (3, hidden_size))
        grad_hiddens = torch.empty_like(outputs)  # dh of each step
        carry = grad_hidden
        for step in _time_order(len(outputs), not ctx.reverse):
            grad = torch.add(carry, grad_outputs[step], out=grad_hiddens[step])
            torch.mul(factors[step], grad.unsqueeze(1), out=grad_recurrent_split[step])
            carry = torch.addmm(grad * update[step], grad_recurrent[step], weight_hh)
        # r and z meet both projections alike; the candidate's differ by the factor r.
        grad_projected = torch.cat([grad_recurrent[..., : 2 * hidden_size], grad_hiddens.mul_(new_factor)], dim=-1)
        grad_weight = _weight_gradient(grad_recurrent, previous) if ctx.needs_input_grad[2] else None
        grad_bias = grad_recurrent.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_projected, carry, grad_weight, grad_bias, None


class _LSTMLayer(torch.autograd.Function):
    """The LSTM of ``lstm_step`` (or ``peephole_lstm_step`` when ``peephole`` (3H) is given)
    over ``projected`` (T, B, 4H), which holds both biases."""

    @staticmethod
    def forward(ctx, projected, hidden, cell, weight_hh, peephole, reverse: bool):
        hidden_size = hidden.shape[-1]
        gates = projected.new_empty(projected.shape)  # i, f, g, o after their nonlinearities
        state_shape = projected.shape[:-1] + (hidden_size,)
        cells, tanh_cells, outputs = (projected.new_empty(state_shape) for _ in range(3))
        initial_hidden, initial_cell, weight_hh_t = hidden, cell, weight_hh.t().contiguous()
        if peephole is not None:
            peephole_input_forget = peephole[: 2 * hidden_size].view(2, hidden_size)
            peephole_output = peephole[2 * hidden_size :]
        for step in _time_order(len(projected), reverse):
            step_gates = torch.addmm(projected[step], hidden, weight_hh_t, out=gates[step])
            input_forget = step_gates[:, : 2 * hidden_size]
            if peephole is not None:  # i and f see c_{t-1}
                input_forget.unflatten(1, (2, hidden_size)).addcmul_(peephole_input_forget, cell.unsqueeze(1))
            input_forget.sigmoid_()
            input_gate, forget_gate, candidate, output_gate = step_gates.chunk(4, 1)
            _tanh(candidate, out=candidate)
            cell = torch.mul(forget_gate, cell, out=cells[step]).addcmul_(input_gate, candidate)
            if peephole is not None:  # o sees c_t
                output_gate.addcmul_(peephole_output, cell)
            output_gate.sigmoid_()
            hidden = torch.mul(output_gate, _tanh(cell, out=tanh_cells[step]), out=outputs[step])
        ctx.reverse = reverse
        ctx.save_for_backward(initial_hidden, initial_cell, weight_hh, peephole, gates, cells, tanh_cells, outputs)
        return outputs, hidden.clone(), cell.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, grad_hidden, grad_cell):
        initial_hidden, initial_cell, weight_hh, peephole, gates, cells, tanh_cells, outputs = ctx.saved_tensors
        hidden_size = outputs.shape[-1]
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, -1)
        previous_cells = _previous(initial_cell, cells, ctx.reverse)
        # With dh and dc the gradients of h' = o tanh(c') and c' = f c + i g, the step's
        # gradients are dc' = dc + dh o (1 - tanh^2 c'), dc_{t-1} = dc' f and, per gate
        # preactivation, dc' or dh times a factor known from the forward pass (the gate's
        # partner in the product times the derivative of the gate's own nonlinearity).
        # (In-place ops on fresh buffers keep the number of large temporaries down: at
        # these sizes, touching new memory costs as much as the arithmetic.)
        factors = torch.cat([candidate, previous_cells, input_gate, tanh_cells], -1)  # each gate's partner
        derivatives = torch.addcmul(gates, gates, gates, value=-1)  # sigmoid' = a (1 - a) ...
        torch.mul(candidate, candidate, out=derivatives[..., 2 * hidden_size : 3 * hidden_size]).neg_().add_(1)
        factors.mul_(derivatives)  # ... and tanh' = 1 - g^2
        cell_factors = factors[..., : 3 * hidden_size].unflatten(-1, (3, hidden_size))  # i, f, g: times dc'
        hidden_factors = factors[..., 3 * hidden_size :]  # o: times dh
        cell_factor = torch.mul(tanh_cells, tanh_cells).neg_().add_(1).mul_(output_gate)  # dc' from dh
        forget_factor = forget_gate  # dc_{t-1} from dc'
        if peephole is not None:
            # The peepholes add paths that keep the same shape: o's preactivation (dh times
            # its factor) reaches c' through p_o, and those of i and f (dc' times theirs)
            # reach c_{t-1} through p_i and p_f.
            peephole_input, peephole_forget, peephole_output = peephole.chunk(3)
            cell_factor = cell_factor + hidden_factors * peephole_output
            forget_factor = forget_gate + cell_factors[..., 0, :] * peephole_input
            forget_factor = forget_factor + cell_factors[..., 1, :] * peephole_forget
        grad_gates = derivatives  # used up: its memory takes the gradients of the preactivations
        grad_cell_gates = grad_gates[..., : 3 * hidden_size].unflatten(-1, (3, hidden_size))
        carry_hidden, carry_cell = grad_hidden, grad_cell
        for step in _time_order(len(outputs), not ctx.reverse):
            grad_hidden = carry_hidden + grad_outputs[step]
            grad_cell = torch.addcmul(carry_cell, grad_hidden, cell_factor[step])
            torch.mul(cell_factors[step], grad_cell.unsqueeze(1), out=grad_cell_gates[step])
            torch.mul(hidden_factors[step], grad_hidden, out=grad_gates[step, :, 3 * hidden_size :])
            carry_cell = grad_cell * forget_factor[step]
            carry_hidden = grad_gates[step].mm(weight_hh)
        grad_weight = grad_peephole = None
        if ctx.needs_input_grad[3]:
            grad_weight = _weight_gradient(grad_gates, _previous(initial_hidden, outputs, ctx.reverse))
        if peephole is not None and ctx.needs_input_grad[4]:
            grad_input, grad_forget, _, grad_output = grad_gates.chunk(4, -1)
            grad_peephole = torch.cat(
                [
                    (grad_input * previous_cells).sum((0, 1)),
                    (grad_forget * previous_cells).sum((0, 1)),
                    (grad_output * cells).sum((0, 1)),
                ]
            )
        return grad_gates, carry_hidden, carry_cell, grad_weight, grad_peephole, None


def rnn_layer(
    inputs: Tensor,
    hidden: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    relu: bool = False,
    transition: Transition = (),
    reverse: bool = False,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """Elman layer over ``inputs`` (T, B, I) from ``hidden`` (B, H) -> outputs (T, B, H), final hidden (B, H).

    ``zoneout`` (with ``training``: masks, else the expectation) applies to ``h``.
    """
    projected = F.linear(inputs, weight_ih, _sum_biases(bias_ih, bias_hh))
    if _use_handwritten(inputs, transition, zoneout):
        return _ElmanLayer.apply(projected, hidden, weight_hh, relu, reverse)
    weight_hh_t = weight_hh.t().contiguous()
    steps = projected.unbind(0)
    keep = zoneout_keep(hidden, len(steps), zoneout, training)
    outputs: list[Tensor] = [hidden] * len(steps)
    for step in _time_order(len(steps), reverse):
        new = rnn_step(steps[step], deep_transition(hidden, transition), weight_hh_t, relu)
        hidden = zoneout_update(hidden, new, keep, step)
        outputs[step] = hidden
    return torch.stack(outputs), hidden


def gru_layer(
    inputs: Tensor,
    hidden: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    transition: Transition = (),
    reverse: bool = False,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """GRU layer over ``inputs`` (T, B, I) from ``hidden`` (B, H) -> outputs (T, B, H), final hidden (B, H).

    ``zoneout`` (with ``training``: masks, else the expectation) applies to ``h``.
    """
    projected = F.linear(inputs, weight_ih, bias_ih)
    if _use_handwritten(inputs, transition, zoneout):
        return _GRULayer.apply(projected, hidden, weight_hh, bias_hh, reverse)
    weight_hh_t = weight_hh.t().contiguous()
    steps = projected.unbind(0)
    keep = zoneout_keep(hidden, len(steps), zoneout, training)
    outputs: list[Tensor] = [hidden] * len(steps)
    for step in _time_order(len(steps), reverse):
        new = gru_step(steps[step], hidden, deep_transition(hidden, transition), weight_hh_t, bias_hh)
        hidden = zoneout_update(hidden, new, keep, step)
        outputs[step] = hidden
    return torch.stack(outputs), hidden


def lstm_layer(
    inputs: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    weight_hr: Tensor | None = None,
    peephole: Tensor | None = None,
    transition: Transition = (),
    reverse: bool = False,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """LSTM layer (peephole LSTM when ``peephole`` (3H) is given) over ``inputs`` (T, B, I).

    ``state`` is ``(h (B, P), c (B, H))`` with P = H unless ``weight_hr`` (P, H) projects
    the output -> outputs (T, B, P), final ``(h, c)``. ``zoneout`` (with ``training``:
    independent masks for ``h`` and ``c``, else the expectation) applies to both.
    """
    projected = F.linear(inputs, weight_ih, _sum_biases(bias_ih, bias_hh))
    hidden, cell = state
    if weight_hr is None and _use_handwritten(inputs, transition, zoneout):
        outputs, hidden, cell = _LSTMLayer.apply(projected, hidden, cell, weight_hh, peephole, reverse)
        return outputs, (hidden, cell)
    weight_hh_t = weight_hh.t().contiguous()
    weight_hr_t = None if weight_hr is None else weight_hr.t()
    steps = projected.unbind(0)
    keep_hidden = zoneout_keep(hidden, len(steps), zoneout, training)
    keep_cell = zoneout_keep(cell, len(steps), zoneout, training)
    outputs: list[Tensor] = [hidden] * len(steps)
    for step in _time_order(len(steps), reverse):
        recurrent_input = deep_transition(hidden, transition)
        if peephole is None:
            new_hidden, new_cell = lstm_step(steps[step], recurrent_input, cell, weight_hh_t, weight_hr_t)
        else:
            new_hidden, new_cell = peephole_lstm_step(steps[step], recurrent_input, cell, weight_hh_t, peephole)
        hidden = zoneout_update(hidden, new_hidden, keep_hidden, step)
        cell = zoneout_update(cell, new_cell, keep_cell, step)
        outputs[step] = hidden
    return torch.stack(outputs), (hidden, cell)


# Layer-normalized cells (autograd only: the normalization's backward pass is torch's).

LAYER_NORM_EPS = 1e-5


def _normalized(values: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    """Layer normalization over the last dimension, scaled by ``gain`` and shifted by ``bias``.

    (The width is read from ``gain``, not ``values``: a traced ``values.shape`` would reach the
    ONNX exporter as a dynamic gather it cannot export.)
    """
    return F.layer_norm(values, gain.shape, gain, bias, LAYER_NORM_EPS)


def layernorm_lstm_step(
    projected: Tensor,
    hidden: Tensor,
    cell: Tensor,
    weight_hh_t: Tensor,
    gain_hh: Tensor,
    gain_cell: Tensor,
    bias_cell: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Layer-normalized LSTM step (Ba et al. 2016), gates i, f, g, o in torch's order::

        gates = LN(W_ih x) * g_ih + b_ih + b_hh + LN(W_hh h) * g_hh     (projected holds the first three terms)
        c' = f * c + i * g                  h' = o * tanh(LN(c') * g_c + b_c)

    ``projected`` (B, 4H), ``hidden`` the ``h`` that meets ``W_hh``, ``cell`` (B, H);
    returns ``(h', c')`` with the raw ``c'`` carried on.
    """
    gates = projected + _normalized(torch.mm(hidden, weight_hh_t), gain_hh)
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, 1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    return torch.sigmoid(output_gate) * torch.tanh(_normalized(cell, gain_cell, bias_cell)), cell


def layernorm_gru_step(
    projected: Tensor,
    hidden: Tensor,
    recurrent_input: Tensor,
    weight_hh_t: Tensor,
    gain_hh: Tensor,
    bias_hh: Tensor | None,
) -> Tensor:
    """Layer-normalized GRU step, torch's GRU (``gru_step``) with both products normalized::

        p = LN(W_ih x) * g_ih + b_ih       q = LN(W_hh h) * g_hh + b_hh      (each (B, 3H): r, z, n)
        r = sigmoid(p_r + q_r)    z = sigmoid(p_z + q_z)    n = tanh(p_n + r * q_n)    h' = (1 - z) * n + z * h

    ``projected`` (B, 3H) is p; ``recurrent_input`` is the ``h`` that meets ``W_hh``, ``hidden`` that of the
    interpolation.
    """
    recurrent = _normalized(torch.mm(recurrent_input, weight_hh_t), gain_hh)
    if bias_hh is not None:
        recurrent = recurrent + bias_hh
    projected_reset, projected_update, projected_new = projected.chunk(3, 1)
    recurrent_reset, recurrent_update, recurrent_new = recurrent.chunk(3, 1)
    reset = torch.sigmoid(projected_reset + recurrent_reset)
    update = torch.sigmoid(projected_update + recurrent_update)
    new = torch.tanh(projected_new + reset * recurrent_new)
    return torch.lerp(new, hidden, update)


def _normalized_projection(inputs: Tensor, weight_ih: Tensor, gain_ih: Tensor, bias: Tensor | None) -> Tensor:
    """``LN(W_ih x) * g_ih + bias`` for all T steps at once (the normalization is per row): (T, B, I) -> (T, B, G)."""
    projected = _normalized(F.linear(inputs, weight_ih), gain_ih)
    return projected if bias is None else projected + bias


def layernorm_lstm_layer(
    inputs: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    gain_ih: Tensor,
    gain_hh: Tensor,
    gain_cell: Tensor,
    bias_cell: Tensor | None,
    *,
    transition: Transition = (),
    reverse: bool = False,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Layer-normalized LSTM layer over ``inputs`` (T, B, I) from ``(h, c)`` (B, H) each -> outputs (T, B, H), ``(h, c)``.

    ``gain_ih``, ``gain_hh`` (4H) scale the normalized products; ``gain_cell``, ``bias_cell`` (H) the normalized cell.
    """
    projected = _normalized_projection(inputs, weight_ih, gain_ih, _sum_biases(bias_ih, bias_hh))
    hidden, cell = state
    weight_hh_t = weight_hh.t()
    steps = projected.unbind(0)
    keep_hidden = zoneout_keep(hidden, len(steps), zoneout, training)
    keep_cell = zoneout_keep(cell, len(steps), zoneout, training)
    outputs: list[Tensor] = [hidden] * len(steps)
    for step in _time_order(len(steps), reverse):
        new_hidden, new_cell = layernorm_lstm_step(
            steps[step], deep_transition(hidden, transition), cell, weight_hh_t, gain_hh, gain_cell, bias_cell
        )
        hidden = zoneout_update(hidden, new_hidden, keep_hidden, step)
        cell = zoneout_update(cell, new_cell, keep_cell, step)
        outputs[step] = hidden
    return torch.stack(outputs), (hidden, cell)


def layernorm_gru_layer(
    inputs: Tensor,
    hidden: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    gain_ih: Tensor,
    gain_hh: Tensor,
    *,
    transition: Transition = (),
    reverse: bool = False,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """Layer-normalized GRU layer over ``inputs`` (T, B, I) from ``hidden`` (B, H) -> outputs (T, B, H), final hidden.

    ``gain_ih``, ``gain_hh`` (3H) scale the normalized input and recurrent products.
    """
    projected = _normalized_projection(inputs, weight_ih, gain_ih, bias_ih)
    weight_hh_t = weight_hh.t()
    steps = projected.unbind(0)
    keep = zoneout_keep(hidden, len(steps), zoneout, training)
    outputs: list[Tensor] = [hidden] * len(steps)
    for step in _time_order(len(steps), reverse):
        new = layernorm_gru_step(
            steps[step], hidden, deep_transition(hidden, transition), weight_hh_t, gain_hh, bias_hh
        )
        hidden = zoneout_update(hidden, new, keep, step)
        outputs[step] = hidden
    return torch.stack(outputs), hidden


# The Mogrifier LSTM (Melis, Kocisky and Blunsom 2020, "Mogrifier LSTM"): autograd only.

Factor = Tensor | tuple[Tensor, Tensor]
"""One mogrifier round's matrix (out, in), or its low-rank factors ``(left (out, k), right (k, in))``."""


def _times(factor: Factor, values: Tensor) -> Tensor:
    """``values`` (B, in) times the round's matrix -> (B, out)."""
    if isinstance(factor, Tensor):
        return F.linear(values, factor)
    left, right = factor
    return F.linear(F.linear(values, right), left)


def mogrify(inputs: Tensor, hidden: Tensor, factors: Sequence[Factor]) -> tuple[Tensor, Tensor]:
    """The rounds in which the input and the state gate each other before the LSTM step::

        round 1, 3, ...:  x = 2 * sigmoid(Q_i h) * x        round 2, 4, ...:  h = 2 * sigmoid(R_i x) * h

    ``inputs`` (B, I), ``hidden`` (B, H); ``factors`` alternate Q (I, H) and R (H, I). No rounds: unchanged.
    """
    for index, factor in enumerate(factors):
        if index % 2 == 0:
            inputs = 2 * torch.sigmoid(_times(factor, hidden)) * inputs
        else:
            hidden = 2 * torch.sigmoid(_times(factor, inputs)) * hidden
    return inputs, hidden


def mogrifier_lstm_layer(
    inputs: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    factors: Sequence[Factor],
    *,
    transition: Transition = (),
    reverse: bool = False,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Mogrifier LSTM layer over ``inputs`` (T, B, I) from ``(h, c)`` (B, H) each -> outputs (T, B, H), ``(h, c)``.

    Each step mogrifies ``x_t`` and ``h_{t-1}`` (``mogrify``), then runs torch's LSTM step on them; the input
    projection cannot be done for all steps at once, since ``x_t`` changes with ``h_{t-1}``. With no
    ``factors`` it is the plain LSTM.
    """
    hidden, cell = state
    bias = _sum_biases(bias_ih, bias_hh)
    weight_hh_t = weight_hh.t()
    steps = inputs.unbind(0)
    keep_hidden = zoneout_keep(hidden, len(steps), zoneout, training)
    keep_cell = zoneout_keep(cell, len(steps), zoneout, training)
    outputs: list[Tensor] = [hidden] * len(steps)
    for step in _time_order(len(steps), reverse):
        x, recurrent = mogrify(steps[step], deep_transition(hidden, transition), factors)
        projected = F.linear(x, weight_ih, bias)
        new_hidden, new_cell = lstm_step(projected, recurrent, cell, weight_hh_t, None)
        hidden = zoneout_update(hidden, new_hidden, keep_hidden, step)
        cell = zoneout_update(cell, new_cell, keep_cell, step)
        outputs[step] = hidden
    return torch.stack(outputs), (hidden, cell)
