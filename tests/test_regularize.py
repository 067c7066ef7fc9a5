"""Regularizers: locked and embedding dropout, AR/TAR, and weight drop on both backends."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from textrnn.errors import TextrnnError
from textrnn.nn import (
    GRU,
    LSTM,
    RNN,
    LockedDropout,
    activation_regularization,
    drop_connect,
    embedding_dropout,
    make_encoder,
    temporal_activation_regularization,
)

INPUT_SIZE, HIDDEN_SIZE, BATCH_SIZE, LENGTH = 5, 8, 3, 7
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
TORCH_CELLS = ("rnn_tanh", "gru", "lstm")


def textrnn_module(cell: str, **options) -> nn.Module:
    if cell.startswith("rnn_"):
        return RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=cell.removeprefix("rnn_"), **options)
    return {"gru": GRU, "lstm": LSTM}[cell](INPUT_SIZE, HIDDEN_SIZE, **options)


def torch_module(cell: str, **options) -> nn.Module:
    if cell.startswith("rnn_"):
        return nn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=cell.removeprefix("rnn_"), **options)
    return {"gru": nn.GRU, "lstm": nn.LSTM}[cell](INPUT_SIZE, HIDDEN_SIZE, **options)


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


# Locked dropout.


def test_locked_dropout_keeps_one_mask_per_row_over_time():
    dropout = LockedDropout(0.5).train()
    inputs = torch.ones(4, 20, 64)
    first = dropout(inputs)
    assert torch.equal(first, first[:, :1].expand_as(first))  # constant over time within each row
    assert set(first.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert not torch.equal(first[0, 0], first[1, 0])  # rows differ
    second = dropout(inputs)
    assert not torch.equal(first, second)  # batches (calls) differ


def test_locked_dropout_in_eval_mode_is_the_identity():
    dropout = LockedDropout(0.5).eval()
    inputs = torch.randn(2, 3, 4)
    assert dropout(inputs) is inputs
    assert LockedDropout(0.0).train()(inputs) is inputs


def test_locked_dropout_passes_gradients_through_the_kept_units():
    dropout = LockedDropout(0.25).train()
    inputs = torch.randn(3, 5, 16, requires_grad=True)
    output = dropout(inputs)
    output.sum().backward()
    mask = output.detach() / inputs.detach()
    torch.testing.assert_close(inputs.grad, mask)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_drop_rates_outside_the_unit_interval_are_refused(p):
    with pytest.raises(TextrnnError, match=r"must be in \[0, 1\)"):
        LockedDropout(p)
    with pytest.raises(TextrnnError, match=r"--weight-drop must be in \[0, 1\)"):
        LSTM(INPUT_SIZE, HIDDEN_SIZE, weight_drop=p)
    with pytest.raises(TextrnnError, match=r"--dropout-layers must be in \[0, 1\)"):
        make_encoder("gru", INPUT_SIZE, HIDDEN_SIZE, 2, 0.0, locked_dropout=p)
    with pytest.raises(TextrnnError, match=r"--zoneout must be in \[0, 1\)"):
        make_encoder("gru", INPUT_SIZE, HIDDEN_SIZE, 2, 0.0, backend="scratch", zoneout=p)


# Embedding dropout.


def test_embedding_dropout_drops_whole_rows_and_rescales_the_rest():
    weight = torch.randn(50, 6)
    dropped = embedding_dropout(weight, 0.4, training=True)
    kept = dropped.abs().sum(1) > 0
    assert 0 < kept.sum() < 50  # some rows dropped, some kept (a fixed seed makes this certain)
    torch.testing.assert_close(dropped[kept], weight[kept] / 0.6)
    assert torch.all(dropped[~kept] == 0)
    again = embedding_dropout(weight, 0.4, training=True)
    assert not torch.equal(again.abs().sum(1) > 0, kept)  # a new mask per call


def test_embedding_dropout_in_eval_mode_is_the_matrix_itself():
    weight = torch.randn(5, 3)
    assert embedding_dropout(weight, 0.5, training=False) is weight
    assert embedding_dropout(weight, 0.0, training=True) is weight


def test_a_dropped_character_vanishes_from_the_whole_batch():
    weight = torch.randn(4, 3, requires_grad=True)
    tokens = torch.tensor([[0, 1, 2, 3, 0], [3, 2, 1, 0, 1]])
    dropped = embedding_dropout(weight, 0.5, training=True)
    features = F.embedding(tokens, dropped)
    kept = dropped.detach().abs().sum(1) > 0
    for token in range(4):
        assert torch.all((features[tokens == token].abs().sum(1) > 0) == kept[token])
    features.sum().backward()
    assert torch.all(weight.grad[~kept] == 0) and torch.all(weight.grad[kept] != 0)


# AR and TAR.


def test_activation_regularizers_add_the_hand_computed_amounts():
    outputs = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [3.0, 4.0]]])  # (B=1, T=3, H=2)
    # AR: alpha * mean of squares = 0.5 * (1 + 4 + 9 + 25 + 9 + 16) / 6
    torch.testing.assert_close(activation_regularization(outputs, 0.5), torch.tensor(0.5 * 64 / 6))
    # TAR: beta * mean of squared steps = 2 * ((2^2 + 3^2) + (0^2 + 1^2)) / 4
    torch.testing.assert_close(temporal_activation_regularization(outputs, 2.0), torch.tensor(2.0 * 14 / 4))
    assert temporal_activation_regularization(outputs[:, :1], 2.0).item() == 0.0


# Weight drop.


def test_drop_connect_is_the_identity_in_eval_mode():
    weight = torch.randn(4, 4)
    assert drop_connect(weight, 0.5, training=False) is weight
    assert drop_connect(weight, 0.0, training=True) is weight


@pytest.mark.parametrize("backend", ["fused", "scratch"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_weight_drop_is_dropconnect_on_every_recurrent_matrix(cell, backend):
    """One mask per call on each W_hh, shared by every step and row: torch.nn with the dropped matrices in place."""
    options = {"num_layers": 2, "bidirectional": True, "batch_first": True}
    reference = torch_module(cell, **options)
    ours = textrnn_module(cell, backend=backend, weight_drop=0.4, **options).train()
    ours.load_state_dict(reference.state_dict())
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    torch.manual_seed(7)
    output, state = ours(inputs)
    torch.manual_seed(7)
    names = [name for name, _ in reference.named_parameters() if name.startswith("weight_hh")]
    dropped = {name: F.dropout(getattr(reference, name), 0.4, training=True) for name in names}  # in ours' order
    assert all((weight == 0).any() for weight in dropped.values())
    expected_output, expected_state = functional_call(reference, dropped, (inputs,))
    torch.testing.assert_close(output, expected_output, **TOLERANCE)
    for actual, expected in zip(as_tuple(state), as_tuple(expected_state)):
        torch.testing.assert_close(actual, expected, **TOLERANCE)


@pytest.mark.parametrize("backend", ["fused", "scratch"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_weight_drop_leaves_the_stored_weights_untouched(cell, backend):
    reference = torch_module(cell, num_layers=2)
    ours = textrnn_module(cell, num_layers=2, backend=backend, weight_drop=0.5)
    assert list(ours.state_dict()) == list(reference.state_dict())  # keys unchanged
    parameters = dict(ours.named_parameters())
    before = {name: parameter.detach().clone() for name, parameter in parameters.items()}
    for _ in range(3):
        output, _ = ours(torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE))
        output.sum().backward()
    after = dict(ours.named_parameters())
    assert all(after[name] is parameters[name] for name in parameters)  # the same Parameter objects
    assert all(isinstance(parameter, nn.Parameter) for parameter in after.values())
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert all(weight is parameters[name] for name, weight in zip(ours._flat_weights_names, ours._flat_weights))
    assert ours.weight_hh_l1.grad is not None and ours.weight_hh_l1.grad.abs().sum() > 0
    reference.load_state_dict(ours.state_dict())  # still torch's format


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_weight_drop_on_the_fused_backend_equals_scratch_with_the_same_mask(cell):
    """Both backends draw the weight masks, then the locked masks, in one order: seeded alike they agree."""
    options = {"num_layers": 3, "bidirectional": True, "batch_first": True, "weight_drop": 0.5, "locked_dropout": 0.3}
    fused = textrnn_module(cell, backend="fused", **options).train()
    scratch = textrnn_module(cell, backend="scratch", **options).train()
    scratch.load_state_dict(fused.state_dict())
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    state = as_tuple(tuple(torch.randn(6, BATCH_SIZE, HIDDEN_SIZE) for _ in range(2 if cell == "lstm" else 1)))
    results = []
    for module in (fused, scratch):
        torch.manual_seed(11)
        given = [part.clone().requires_grad_() for part in state]
        output, final = module(inputs, tuple(given) if cell == "lstm" else given[0])
        loss = (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum()
        loss = loss + sum(part.pow(2).sum() for part in as_tuple(final))
        loss.backward()
        gradients = [parameter.grad.clone() for _, parameter in sorted(module.named_parameters())]
        results.append([output, *as_tuple(final), *(part.grad for part in given), *gradients])
        module.zero_grad()
    for fused_result, scratch_result in zip(*results):
        torch.testing.assert_close(scratch_result, fused_result, **TOLERANCE)


@pytest.mark.parametrize("backend", ["fused", "scratch"])
def test_weight_drop_draws_one_mask_per_call_shared_by_the_rows(backend):
    ours = LSTM(INPUT_SIZE, HIDDEN_SIZE, batch_first=True, backend=backend, weight_drop=0.5).train()
    row = torch.randn(1, LENGTH, INPUT_SIZE)
    output, _ = ours(row.expand(4, -1, -1))
    assert torch.equal(output, output[:1].expand_as(output))  # identical rows see the same dropped matrix
    assert not torch.equal(ours(row)[0], ours(row)[0])  # and each call draws a new one


@pytest.mark.parametrize("backend", ["fused", "scratch"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_eval_mode_is_deterministic_and_unscaled(cell, backend):
    reference = torch_module(cell, num_layers=2, batch_first=True)
    ours = textrnn_module(
        cell, num_layers=2, batch_first=True, backend=backend, weight_drop=0.5, locked_dropout=0.5
    ).eval()
    ours.load_state_dict(reference.state_dict())
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    first, second = ours(inputs)[0], ours(inputs)[0]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, reference(inputs)[0], **TOLERANCE)


@pytest.mark.parametrize("backend", ["fused", "scratch"])
def test_locked_dropout_between_layers_is_one_mask_per_row_over_time(backend):
    """Layer 2 reads layer 1's outputs times a mask (B, H) drawn once per call, the same at every step."""
    ours = GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, batch_first=True, backend=backend, locked_dropout=0.5).train()
    first_layer = nn.GRU(INPUT_SIZE, HIDDEN_SIZE, batch_first=True)
    second_layer = nn.GRU(HIDDEN_SIZE, HIDDEN_SIZE, batch_first=True)
    for layer, module in enumerate((first_layer, second_layer)):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(module, f"{kind}_l0").data.copy_(getattr(ours, f"{kind}_l{layer}"))
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    torch.manual_seed(3)
    output, _ = ours(inputs)
    torch.manual_seed(3)
    mask = torch.empty(BATCH_SIZE, HIDDEN_SIZE).bernoulli_(0.5) / 0.5
    assert (mask == 0).any()
    expected, _ = second_layer(first_layer(inputs)[0] * mask.unsqueeze(1))
    torch.testing.assert_close(output, expected, **TOLERANCE)


@pytest.mark.parametrize("backend", ["fused", "scratch"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_weight_drop_raises_no_warning(cell, backend):
    ours = make_encoder(cell, INPUT_SIZE, HIDDEN_SIZE, 2, 0.2, backend=backend, weight_drop=0.5, locked_dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output, _ = ours.train()(torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE))
        output.sum().backward()
        ours.eval()(torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE))


def test_a_single_layer_has_no_locked_dropout_and_runs_torch_forward():
    encoder = make_encoder("lstm", INPUT_SIZE, HIDDEN_SIZE, 1, 0.0, locked_dropout=0.5).train()
    assert not encoder._regularizing()
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    assert torch.equal(encoder(inputs)[0], encoder(inputs)[0])


def test_weight_drop_in_training_takes_padded_tensors_only():
    ours = LSTM(INPUT_SIZE, HIDDEN_SIZE, weight_drop=0.5)
    packed = pack_padded_sequence(torch.randn(LENGTH, 2, INPUT_SIZE), [LENGTH, 3])
    with pytest.raises(TypeError, match="PackedSequence"):
        ours.train()(packed)
    ours.eval()(packed)  # evaluation runs torch's own forward


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("backend", ["fused", "scratch"])
def test_weight_drop_with_a_projection_and_without_bias(backend):
    options = {"proj_size": 3, "num_layers": 2, "bias": False, "batch_first": True}
    reference = nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, **options)
    ours = LSTM(INPUT_SIZE, HIDDEN_SIZE, backend=backend, weight_drop=0.3, **options).train()
    ours.load_state_dict(reference.state_dict())
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    torch.manual_seed(5)
    output, _ = ours(inputs)
    torch.manual_seed(5)
    dropped = {
        name: F.dropout(getattr(reference, name), 0.3, training=True) for name in ("weight_hh_l0", "weight_hh_l1")
    }
    expected, _ = functional_call(reference, dropped, (inputs,))
    torch.testing.assert_close(output, expected, **TOLERANCE)


def test_unbatched_input_with_weight_drop():
    ours = GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, weight_drop=0.5, locked_dropout=0.5).train()
    output, hidden = ours(torch.randn(LENGTH, INPUT_SIZE), torch.zeros(2, HIDDEN_SIZE))
    assert output.shape == (LENGTH, HIDDEN_SIZE) and hidden.shape == (2, HIDDEN_SIZE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_weight_drop_on_cudnn_warns_nothing_and_equals_scratch(cell, bidirectional, monkeypatch):
    """cuDNN gets the dropped matrices in its own flat layout: no 'not part of single contiguous chunk' warning."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    options = {"num_layers": 2, "bidirectional": bidirectional, "batch_first": True, "weight_drop": 0.5}
    results = []
    for backend, locked in (("fused", 0.0), ("fused", 0.3), ("scratch", 0.0), ("scratch", 0.3)):
        torch.manual_seed(0)
        module = textrnn_module(cell, backend=backend, locked_dropout=locked, **options).cuda().train()
        inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE, device="cuda")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            output, _ = module(inputs)
            output.square().sum().backward()
        results.append((output, module.weight_hh_l0.grad))
    for fused, scratch in ((results[0], results[2]), (results[1], results[3])):
        for expected, actual in zip(fused, scratch):
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
