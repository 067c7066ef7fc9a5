"""The cell library against torch.nn: same outputs, states and gradients (fp32, 1e-5), and the scratch-only variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from textrnn.errors import TextrnnError
from textrnn.nn import (
    GRU,
    LSTM,
    RNN,
    SCRATCH_ONLY_CELLS,
    LayerNormGRU,
    LayerNormLSTM,
    PeepholeLSTM,
    cells,
    make_encoder,
)

INPUT_SIZE, HIDDEN_SIZE, BATCH_SIZE, LENGTH = 5, 8, 3, 7
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
TORCH_CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")


def torch_module(cell: str, **options) -> nn.Module:
    """The torch.nn reference for ``cell``."""
    if cell.startswith("rnn_"):
        return nn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=cell.removeprefix("rnn_"), **options)
    return {"gru": nn.GRU, "lstm": nn.LSTM}[cell](INPUT_SIZE, HIDDEN_SIZE, **options)


def textrnn_module(cell: str, input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE, **options) -> nn.Module:
    if cell.startswith("rnn_"):
        return RNN(input_size, hidden_size, nonlinearity=cell.removeprefix("rnn_"), **options)
    return {"gru": GRU, "lstm": LSTM, "peephole_lstm": PeepholeLSTM}[cell](input_size, hidden_size, **options)


def reference_pair(cell: str, backend: str = "scratch", **options) -> tuple[nn.Module, nn.Module]:
    """A torch.nn module and its textrnn twin holding copies of the same weights."""
    reference = torch_module(cell, **options)
    ours = textrnn_module(cell, backend=backend, **options)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def random_state(module: nn.Module, batch_size: int = BATCH_SIZE):
    """A random initial state of the shape torch.nn expects: (L * D, B, H), a pair for LSTMs."""
    stacked = module.num_layers * (2 if module.bidirectional else 1)
    hidden = torch.randn(stacked, batch_size, module.proj_size or module.hidden_size)
    return (hidden, torch.randn(stacked, batch_size, module.hidden_size)) if isinstance(module, nn.LSTM) else hidden


def run(module: nn.Module, inputs: torch.Tensor, state=None) -> dict[str, list[torch.Tensor]]:
    """Forward and backward of a fixed random projection of the outputs and final state; every result."""
    inputs = inputs.clone().requires_grad_()
    if state is not None:
        state = tuple(part.clone().requires_grad_() for part in as_tuple(state))
        state = state if len(state) == 2 else state[0]
    module.zero_grad(set_to_none=True)
    output, final_state = module(inputs, state)
    weights = torch.Generator().manual_seed(1)
    results = [output, *as_tuple(final_state)]
    loss = sum((result * torch.randn(result.shape, generator=weights).to(result.device)).sum() for result in results)
    loss.backward()
    state_grads = [] if state is None else [part.grad for part in as_tuple(state)]
    return {
        "outputs and states": results,
        "input and state gradients": [inputs.grad, *state_grads],
        "parameter gradients": [parameter.grad for _, parameter in sorted(module.named_parameters())],
    }


def assert_same_results(expected: dict, actual: dict) -> None:
    for key, expected_tensors in expected.items():
        assert len(actual[key]) == len(expected_tensors), key
        for expected_tensor, actual_tensor in zip(expected_tensors, actual[key]):
            torch.testing.assert_close(
                actual_tensor, expected_tensor, **TOLERANCE, msg=lambda text, key=key: f"{key}: {text}"
            )


@pytest.fixture(params=["handwritten", "autograd"])
def backward_path(request, monkeypatch):
    """Run a test through both ways of differentiating the scratch cells."""
    monkeypatch.setattr(cells, "HANDWRITTEN_BACKWARD", request.param == "handwritten")
    return request.param


# Equivalence with torch.nn: the backbone.


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_scratch_equals_torch(cell, num_layers, bidirectional, batch_first, backward_path):
    reference, ours = reference_pair(cell, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    shape = (BATCH_SIZE, LENGTH, INPUT_SIZE) if batch_first else (LENGTH, BATCH_SIZE, INPUT_SIZE)
    inputs = torch.randn(shape)
    assert_same_results(run(reference, inputs), run(ours, inputs))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_scratch_equals_torch_from_an_initial_state(cell, bidirectional, backward_path):
    reference, ours = reference_pair(cell, num_layers=2, bidirectional=bidirectional, batch_first=True)
    inputs, state = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE), random_state(reference)
    assert_same_results(run(reference, inputs, state), run(ours, inputs, state))


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(
    "cell, options",
    [
        ("gru", {"bias": False}),
        ("lstm", {"bias": False, "bidirectional": True}),
        ("rnn_relu", {"bias": False}),
        ("lstm", {"proj_size": 3, "num_layers": 2, "bidirectional": True}),
    ],
)
def test_scratch_equals_torch_without_bias_and_with_projection(cell, options, backward_path):
    reference, ours = reference_pair(cell, batch_first=True, **options)
    inputs, state = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE), random_state(reference)
    assert_same_results(run(reference, inputs, state), run(ours, inputs, state))


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_unbatched_input_as_torch(cell):
    reference, ours = reference_pair(cell, num_layers=2, bidirectional=True)
    inputs = torch.randn(LENGTH, INPUT_SIZE)
    state = tuple(part[:, 0] for part in as_tuple(random_state(reference)))
    state = state if len(state) == 2 else state[0]
    assert_same_results(run(reference, inputs, state), run(ours, inputs, state))


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_carrying_the_state_equals_one_long_forward(cell):
    _, ours = reference_pair(cell, num_layers=2, batch_first=True)
    inputs = torch.randn(BATCH_SIZE, 12, INPUT_SIZE)
    whole, _ = ours(inputs)
    first, state = ours(inputs[:, :5])
    second, _ = ours(inputs[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, **TOLERANCE)


# Parameters and state_dict: torch's names, both ways.


@pytest.mark.parametrize("backend", ["fused", "scratch"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_state_dict_loads_both_ways(cell, backend):
    options = {"num_layers": 2, "bidirectional": True}
    reference, ours = torch_module(cell, **options), textrnn_module(cell, backend=backend, **options)
    assert list(ours.state_dict()) == list(reference.state_dict())
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)

    ours.load_state_dict(reference.state_dict())  # torch -> textrnn
    torch.testing.assert_close(ours(inputs)[0], reference(inputs)[0], **TOLERANCE)

    fresh = textrnn_module(cell, backend=backend, **options)
    reference.load_state_dict(fresh.state_dict())  # textrnn -> torch
    torch.testing.assert_close(reference(inputs)[0], fresh(inputs)[0], **TOLERANCE)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_same_seed_same_weights_and_fused_is_torch(cell):
    torch.manual_seed(3)
    reference = torch_module(cell, num_layers=2)
    torch.manual_seed(3)
    ours = textrnn_module(cell, num_layers=2)
    for (name, expected), (our_name, actual) in zip(reference.named_parameters(), ours.named_parameters()):
        assert name == our_name
        assert torch.equal(actual, expected)
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    assert torch.equal(ours(inputs)[0], reference(inputs)[0])


def test_a_wrong_state_shape_is_refused():
    ours = GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, backend="scratch")
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        ours(torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE), torch.zeros(1, BATCH_SIZE, HIDDEN_SIZE))


def test_dropout_only_between_layers_and_only_in_training():
    reference, ours = reference_pair("gru", num_layers=3, dropout=0.5)
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    reference.eval(), ours.eval()
    torch.testing.assert_close(ours(inputs)[0], reference(inputs)[0], **TOLERANCE)
    ours.train()
    first, second = ours(inputs)[0], ours(inputs)[0]
    assert not torch.allclose(first, second)
    single = GRU(INPUT_SIZE, HIDDEN_SIZE, backend="scratch").train()
    assert torch.equal(single(inputs)[0], single(inputs)[0])  # one layer: nothing between layers to drop


def test_mixed_precision_takes_the_autograd_path():
    _, ours = reference_pair("lstm", num_layers=2)
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    expected, _ = ours(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = ours(inputs)
    output.float().sum().backward()
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_handwritten_backward_passes_gradcheck(cell):
    ours = textrnn_module(cell, 3, 2, num_layers=2, bidirectional=True, backend="scratch", dtype=torch.float64)
    assert cells.HANDWRITTEN_BACKWARD
    check_gradients(ours, torch.randn(4, 2, 3, dtype=torch.float64))


def check_gradients(module: nn.Module, inputs: torch.Tensor) -> None:
    """torch.autograd.gradcheck of the output and final state with respect to the input, state and parameters."""
    names = [name for name, _ in module.named_parameters()]
    state = tuple(part.double() for part in as_tuple(random_state(module, inputs.shape[1])))

    def function(inputs, *tensors):
        parameters = dict(zip(names, tensors[len(state) :]))
        given_state = tensors[: len(state)] if len(state) == 2 else tensors[0]
        output, final_state = functional_call(module, parameters, (inputs, given_state))
        return (output, *as_tuple(final_state))

    tensors = [inputs, *state, *(parameter.detach() for parameter in module.parameters())]
    tensors = [tensor.clone().requires_grad_() for tensor in tensors]
    assert torch.autograd.gradcheck(function, tensors)


# Peephole LSTM.


def test_peephole_lstm_with_zero_peepholes_is_the_lstm(backward_path):
    options = {"num_layers": 2, "bidirectional": True, "batch_first": True}
    reference = nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, **options)
    peephole = PeepholeLSTM(INPUT_SIZE, HIDDEN_SIZE, **options)
    missing, unexpected = peephole.load_state_dict(reference.state_dict(), strict=False)
    assert sorted(missing) == sorted(
        f"weight_peephole_l{layer}{suffix}" for layer in (0, 1) for suffix in ("", "_reverse")
    )
    assert not unexpected
    with torch.no_grad():
        for name in missing:
            getattr(peephole, name).zero_()
    inputs, state = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE), random_state(reference)
    expected, actual = run(reference, inputs, state), run(peephole, inputs, state)
    actual["parameter gradients"] = [
        grad
        for (name, _), grad in zip(sorted(peephole.named_parameters()), actual["parameter gradients"])
        if "peephole" not in name
    ]
    assert_same_results(expected, actual)


def test_peephole_lstm_follows_its_equations(backward_path):
    """Input and forget gates see c_{t-1}, the output gate sees c_t."""
    peephole = PeepholeLSTM(INPUT_SIZE, HIDDEN_SIZE)
    inputs = torch.randn(1, BATCH_SIZE, INPUT_SIZE)
    hidden, cell = torch.randn(1, BATCH_SIZE, HIDDEN_SIZE), torch.randn(1, BATCH_SIZE, HIDDEN_SIZE)
    output, (final_hidden, final_cell) = peephole(inputs, (hidden, cell))

    gates = inputs[0] @ peephole.weight_ih_l0.T + peephole.bias_ih_l0 + hidden[0] @ peephole.weight_hh_l0.T
    gates = gates + peephole.bias_hh_l0
    input_pre, forget_pre, candidate_pre, output_pre = gates.chunk(4, 1)
    peephole_input, peephole_forget, peephole_output = peephole.weight_peephole_l0.chunk(3)
    input_gate = torch.sigmoid(input_pre + peephole_input * cell[0])
    forget_gate = torch.sigmoid(forget_pre + peephole_forget * cell[0])
    expected_cell = forget_gate * cell[0] + input_gate * torch.tanh(candidate_pre)
    output_gate = torch.sigmoid(output_pre + peephole_output * expected_cell)
    expected_hidden = output_gate * torch.tanh(expected_cell)
    torch.testing.assert_close(final_cell[0], expected_cell, **TOLERANCE)
    torch.testing.assert_close(final_hidden[0], expected_hidden, **TOLERANCE)
    torch.testing.assert_close(output[0], expected_hidden, **TOLERANCE)


def test_peephole_lstm_passes_gradcheck(backward_path):
    peephole = PeepholeLSTM(3, 2, num_layers=2, bidirectional=True, dtype=torch.float64)
    check_gradients(peephole, torch.randn(4, 2, 3, dtype=torch.float64))


def test_peephole_lstm_backward_paths_agree(monkeypatch):
    peephole = PeepholeLSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True, batch_first=True)
    inputs, state = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE), random_state(peephole)
    handwritten = run(peephole, inputs, state)
    monkeypatch.setattr(cells, "HANDWRITTEN_BACKWARD", False)
    assert_same_results(run(peephole, inputs, state), handwritten)


# Deep transition.


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm", "peephole_lstm"])
def test_transition_depth_one_is_the_plain_cell(cell):
    plain = textrnn_module(cell, backend="scratch", num_layers=2)
    deep = textrnn_module(cell, backend="scratch", num_layers=2, transition_depth=1)
    assert list(deep.state_dict()) == list(plain.state_dict())
    deep.load_state_dict(plain.state_dict())
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    torch.testing.assert_close(deep(inputs)[0], plain(inputs)[0], rtol=0, atol=0)


def test_transition_parameters_are_named_per_layer_and_direction():
    deep = GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True, backend="scratch", transition_depth=3)
    names = {name: tuple(parameter.shape) for name, parameter in deep.named_parameters() if "transition" in name}
    expected = {}
    for layer in (0, 1):
        for suffix in ("", "_reverse"):
            for depth in (0, 1):
                expected[f"weight_transition{depth}_l{layer}{suffix}"] = (HIDDEN_SIZE, HIDDEN_SIZE)
                expected[f"bias_transition{depth}_l{layer}{suffix}"] = (HIDDEN_SIZE,)
    assert names == expected


def mlp(hidden: torch.Tensor, module: nn.Module, depth: int) -> torch.Tensor:
    for index in range(depth - 1):
        weight, bias = getattr(module, f"weight_transition{index}_l0"), getattr(module, f"bias_transition{index}_l0")
        hidden = torch.tanh(hidden @ weight.T + bias)
    return hidden


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_deep_transition_follows_its_equations(cell):
    """The MLP transforms the h_{t-1} that meets W_hh; the GRU's interpolation and the LSTM's cell bypass it."""
    depth = 3
    deep = textrnn_module(cell, backend="scratch", transition_depth=depth)
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    output, _ = deep(inputs)

    hidden = cell_state = torch.zeros(BATCH_SIZE, HIDDEN_SIZE)
    step_cell = {"rnn_tanh": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}[cell](INPUT_SIZE, HIDDEN_SIZE)
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(step_cell, kind, getattr(deep, f"{kind}_l0"))
    expected = []
    for step in range(LENGTH):
        transformed = mlp(hidden, deep, depth)
        if cell == "rnn_tanh":
            hidden = step_cell(inputs[step], transformed)
        elif cell == "lstm":
            hidden, cell_state = step_cell(inputs[step], (transformed, cell_state))
        else:
            projected = inputs[step] @ deep.weight_ih_l0.T + deep.bias_ih_l0
            recurrent = transformed @ deep.weight_hh_l0.T + deep.bias_hh_l0
            reset, update, _ = torch.sigmoid(projected + recurrent).chunk(3, 1)
            new = torch.tanh(projected.chunk(3, 1)[2] + reset * recurrent.chunk(3, 1)[2])
            hidden = (1 - update) * new + update * hidden
        expected.append(hidden)
    torch.testing.assert_close(output, torch.stack(expected), **TOLERANCE)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_deep_transition_passes_gradcheck(cell):
    deep = textrnn_module(cell, 3, 2, backend="scratch", transition_depth=2, bidirectional=True, dtype=torch.float64)
    check_gradients(deep, torch.randn(4, 2, 3, dtype=torch.float64))


# The factory the models use.


def test_make_encoder_keeps_its_old_call():
    encoder = make_encoder("gru", INPUT_SIZE, HIDDEN_SIZE, 1, 0.3)
    assert isinstance(encoder, nn.GRU) and encoder.backend == "fused"
    assert encoder.batch_first and encoder.dropout == 0.0


@pytest.mark.parametrize("backend", ["fused", "scratch"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu", "peephole_lstm"])
def test_make_encoder_builds_every_cell_batch_first(cell, backend):
    if backend == "fused" and cell in SCRATCH_ONLY_CELLS:
        pytest.skip("scratch only")
    encoder = make_encoder(cell, INPUT_SIZE, HIDDEN_SIZE, 2, 0.1, backend=backend, bidirectional=True)
    assert encoder.dropout == 0.1 and encoder.backend == backend
    output, state = encoder(torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE))
    assert output.shape == (BATCH_SIZE, LENGTH, 2 * HIDDEN_SIZE)
    assert all(part.shape == (4, BATCH_SIZE, HIDDEN_SIZE) for part in as_tuple(state))


def test_make_encoder_builds_a_deep_transition_in_scratch():
    encoder = make_encoder("lstm", INPUT_SIZE, HIDDEN_SIZE, 2, 0.0, backend="scratch", transition_depth=3)
    assert encoder.transition_depth == 3
    output, _ = encoder(torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE))
    output.sum().backward()
    assert encoder.weight_transition1_l1.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "cell, options, message",
    [
        ("peephole_lstm", {}, "peephole_lstm cell exists only in scratch form: use --backend scratch"),
        ("gru", {"transition_depth": 2}, r"--transition-depth 2\) exists only in scratch form: use --backend scratch"),
        ("gru", {"backend": "cudnn"}, "unknown backend 'cudnn'"),
        ("gru", {"backend": "scratch", "transition_depth": 0}, "--transition-depth must be at least 1"),
        ("transformer", {}, "unknown cell 'transformer'"),
    ],
)
def test_make_encoder_refuses_what_does_not_exist(cell, options, message):
    with pytest.raises(TextrnnError, match=message):
        make_encoder(cell, INPUT_SIZE, HIDDEN_SIZE, 1, 0.0, **options)


def test_modules_refuse_fused_scratch_only_variants():
    with pytest.raises(TextrnnError, match="use --backend scratch"):
        PeepholeLSTM(INPUT_SIZE, HIDDEN_SIZE, backend="fused")
    with pytest.raises(TextrnnError, match="use --backend scratch"):
        LSTM(INPUT_SIZE, HIDDEN_SIZE, transition_depth=2)
    with pytest.raises(TextrnnError, match="the peephole_lstm cell has no proj_size"):
        PeepholeLSTM(INPUT_SIZE, HIDDEN_SIZE, proj_size=2)


def test_modules_take_torchs_arguments_positionally_and_by_name():
    assert RNN(INPUT_SIZE, HIDDEN_SIZE, 2, "relu").cell == RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity="relu").cell
    assert RNN(INPUT_SIZE, HIDDEN_SIZE).cell == "rnn_tanh"
    lstm = LSTM(INPUT_SIZE, HIDDEN_SIZE, 2, True, True, 0.1, True, 3, backend="scratch")
    assert (lstm.num_layers, lstm.batch_first, lstm.dropout, lstm.bidirectional, lstm.proj_size) == (
        2,
        True,
        0.1,
        True,
        3,
    )
    assert lstm.backend == "scratch" and PeepholeLSTM(INPUT_SIZE, HIDDEN_SIZE).backend == "scratch"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_scratch_on_the_gpu_equals_torch(cell, monkeypatch, backward_path):
    """Against torch.nn in float64 on the CPU: cuDNN's own fp32 gradients stray up to 6e-5 from it (H100)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # fp32 products, as on the CPU
    reference, ours = reference_pair(cell, num_layers=2, bidirectional=True, batch_first=True)
    inputs, state = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE), random_state(reference)
    expected = run(reference.double(), inputs.double(), to(state, dtype=torch.float64))
    expected = {key: [tensor.float().cuda() for tensor in tensors] for key, tensors in expected.items()}
    assert_same_results(expected, run(ours.cuda(), inputs.cuda(), to(state, device="cuda")))


def to(state, **options):
    return tuple(part.to(**options) for part in state) if isinstance(state, tuple) else state.to(**options)


# Layer-normalized cells (Ba et al.): against the equations written out step by step.


def layer_norm(values: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Layer normalization written out: (x - mean) / sqrt(var + 1e-5) * gain + bias over the last dimension."""
    mean = values.mean(-1, keepdim=True)
    variance = ((values - mean) ** 2).mean(-1, keepdim=True)
    normalized = (values - mean) / torch.sqrt(variance + 1e-5) * gain
    return normalized if bias is None else normalized + bias


def naive_layernorm_lstm(module, inputs, hidden, cell, suffix):
    """One layer and direction of the layer-normalized LSTM, one step at a time: (T, B, I) -> outputs, h, c."""

    def parameter(name):
        return getattr(module, f"{name}{suffix}")

    steps = range(len(inputs) - 1, -1, -1) if suffix.endswith("_reverse") else range(len(inputs))
    outputs = [None] * len(inputs)
    for step in steps:
        gates = (
            layer_norm(inputs[step] @ parameter("weight_ih").T, parameter("weight_layernorm_ih"))
            + layer_norm(hidden @ parameter("weight_hh").T, parameter("weight_layernorm_hh"))
            + parameter("bias_ih")
            + parameter("bias_hh")
        )
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, 1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
        normalized_cell = layer_norm(cell, parameter("weight_layernorm_cell"), parameter("bias_layernorm_cell"))
        hidden = torch.sigmoid(output_gate) * torch.tanh(normalized_cell)
        outputs[step] = hidden
    return torch.stack(outputs), hidden, cell


def naive_layernorm_gru(module, inputs, hidden, cell, suffix):
    """One layer and direction of the layer-normalized GRU, one step at a time: (T, B, I) -> outputs, h, None."""

    def parameter(name):
        return getattr(module, f"{name}{suffix}")

    steps = range(len(inputs) - 1, -1, -1) if suffix.endswith("_reverse") else range(len(inputs))
    outputs = [None] * len(inputs)
    for step in steps:
        projected = layer_norm(inputs[step] @ parameter("weight_ih").T, parameter("weight_layernorm_ih"))
        recurrent = layer_norm(hidden @ parameter("weight_hh").T, parameter("weight_layernorm_hh"))
        projected_reset, projected_update, projected_new = (projected + parameter("bias_ih")).chunk(3, 1)
        recurrent_reset, recurrent_update, recurrent_new = (recurrent + parameter("bias_hh")).chunk(3, 1)
        reset = torch.sigmoid(projected_reset + recurrent_reset)
        update = torch.sigmoid(projected_update + recurrent_update)
        new = torch.tanh(projected_new + reset * recurrent_new)
        hidden = (1 - update) * new + update * hidden
        outputs[step] = hidden
    return torch.stack(outputs), hidden, None


def naive_stack(module, naive_layer, inputs, hidden, cell):
    """Layers and directions around ``naive_layer``: time-major ``inputs`` and (L * D, B, H) states."""
    directions = 2 if module.bidirectional else 1
    final_hidden, final_cell = [], []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            output, last_hidden, last_cell = naive_layer(
                module, inputs, hidden[index], None if cell is None else cell[index], suffix
            )
            outputs.append(output)
            final_hidden.append(last_hidden)
            final_cell.append(last_cell)
        inputs = torch.cat(outputs, dim=-1)
    return inputs, torch.stack(final_hidden), (None if cell is None else torch.stack(final_cell))


def layernorm_module(cell: str, input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE, **options) -> nn.Module:
    """A layer-normalized stack whose gains and shifts are random, so that none of them is the identity."""
    module = {"layernorm_lstm": LayerNormLSTM, "layernorm_gru": LayerNormGRU}[cell](input_size, hidden_size, **options)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "layernorm" in name:
                parameter.uniform_(0.5, 1.5) if name.startswith("weight") else parameter.uniform_(-0.5, 0.5)
    return module


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ["layernorm_lstm", "layernorm_gru"])
def test_layernorm_cells_follow_their_equations(cell, bidirectional):
    """In float64, so that the comparison of gradients through the normalizations tests equations, not rounding."""
    module = layernorm_module(cell, num_layers=2, bidirectional=bidirectional).double()
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE, dtype=torch.float64)
    state = to(random_state(module), dtype=torch.float64)
    hidden, cell_state = state if cell == "layernorm_lstm" else (state, None)
    naive_layer = naive_layernorm_lstm if cell == "layernorm_lstm" else naive_layernorm_gru
    expected_output, expected_hidden, expected_cell = naive_stack(module, naive_layer, inputs, hidden, cell_state)
    expected = [expected_output, expected_hidden] + ([] if expected_cell is None else [expected_cell])
    output, final = module(inputs, state)
    for actual, wanted in zip([output, *as_tuple(final)], expected, strict=True):
        torch.testing.assert_close(actual, wanted, **TOLERANCE)

    # The gradients agree too: the naive loop reads the very same parameters.
    weights = torch.Generator().manual_seed(2)
    projections = [torch.randn(tensor.shape, generator=weights, dtype=torch.float64) for tensor in expected]
    gradients = []
    for results in ([output, *as_tuple(final)], expected):
        module.zero_grad(set_to_none=True)
        sum((result * projection).sum() for result, projection in zip(results, projections)).backward()
        gradients.append([parameter.grad for _, parameter in sorted(module.named_parameters())])
    for actual, wanted in zip(*gradients, strict=True):
        torch.testing.assert_close(actual, wanted, **TOLERANCE)


@pytest.mark.parametrize("cell", ["layernorm_lstm", "layernorm_gru"])
def test_layernorm_cells_pass_gradcheck(cell):
    module = layernorm_module(cell, 2, 3, bidirectional=True).double()
    check_gradients(module, torch.randn(3, 2, 2, dtype=torch.float64))


def test_layernorm_parameters_are_named_per_layer_and_direction_and_load_torch_weights():
    module = LayerNormLSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True)
    added = {name: tuple(parameter.shape) for name, parameter in module.named_parameters() if "layernorm" in name}
    expected = {}
    for layer in (0, 1):
        for suffix in ("", "_reverse"):
            expected[f"weight_layernorm_ih_l{layer}{suffix}"] = (4 * HIDDEN_SIZE,)
            expected[f"weight_layernorm_hh_l{layer}{suffix}"] = (4 * HIDDEN_SIZE,)
            expected[f"weight_layernorm_cell_l{layer}{suffix}"] = (HIDDEN_SIZE,)
            expected[f"bias_layernorm_cell_l{layer}{suffix}"] = (HIDDEN_SIZE,)
    assert added == expected
    assert all(torch.all(getattr(module, name) == (1 if name.startswith("weight") else 0)) for name in added)
    missing, unexpected = module.load_state_dict(
        nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True).state_dict(), strict=False
    )
    assert sorted(missing) == sorted(expected) and not unexpected
    gru = LayerNormGRU(INPUT_SIZE, HIDDEN_SIZE, bias=False)
    assert sorted(name for name, _ in gru.named_parameters()) == [
        "weight_hh_l0",
        "weight_ih_l0",
        "weight_layernorm_hh_l0",
        "weight_layernorm_ih_l0",
    ]


@pytest.mark.parametrize("cell", ["layernorm_lstm", "layernorm_gru"])
def test_layernorm_cells_exist_in_scratch_form_only(cell):
    assert cell in SCRATCH_ONLY_CELLS
    with pytest.raises(TextrnnError, match=f"the {cell} cell exists only in scratch form: use --backend scratch"):
        make_encoder(cell, INPUT_SIZE, HIDDEN_SIZE, 1, 0.0, backend="fused")
    encoder = make_encoder(cell, INPUT_SIZE, HIDDEN_SIZE, 2, 0.1, backend="scratch", bidirectional=True)
    assert isinstance(encoder, {"layernorm_lstm": LayerNormLSTM, "layernorm_gru": LayerNormGRU}[cell])
    output, state = encoder(torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE))
    assert output.shape == (BATCH_SIZE, LENGTH, 2 * HIDDEN_SIZE)
    assert all(part.shape == (4, BATCH_SIZE, HIDDEN_SIZE) for part in as_tuple(state))


# Zoneout (Krueger et al.): against the equations, and its limits.


def naive_zoneout(cell: str, module: nn.Module, inputs, keep_hidden, keep_cell):
    """One layer of ``cell`` through torch.nn's step cells with zoneout written out.

    ``keep_*`` per step: a 0/1 mask (training) or the rate (evaluation): ``h = keep * h_prev + (1 - keep) * h_new``.
    """
    step_cell = {"rnn_tanh": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}[cell](INPUT_SIZE, HIDDEN_SIZE)
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(step_cell, kind, getattr(module, f"{kind}_l0"))
    hidden = cell_state = torch.zeros(inputs.shape[1], HIDDEN_SIZE)
    outputs = []
    for step in range(len(inputs)):
        keep_h = keep_hidden if isinstance(keep_hidden, float) else keep_hidden[step]
        if cell == "lstm":
            keep_c = keep_cell if isinstance(keep_cell, float) else keep_cell[step]
            new_hidden, new_cell = step_cell(inputs[step], (hidden, cell_state))
            cell_state = keep_c * cell_state + (1 - keep_c) * new_cell
        else:
            new_hidden = step_cell(inputs[step], hidden)
        hidden = keep_h * hidden + (1 - keep_h) * new_hidden
        outputs.append(hidden)
    return torch.stack(outputs)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_zoneout_in_eval_mode_is_the_expectation(cell):
    module = textrnn_module(cell, backend="scratch", zoneout=0.3).eval()
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    expected = naive_zoneout(cell, module, inputs, 0.3, 0.3)
    torch.testing.assert_close(module(inputs)[0], expected, **TOLERANCE)
    assert torch.equal(module(inputs)[0], module(inputs)[0])  # deterministic


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_zoneout_in_training_keeps_each_unit_with_probability_z(cell):
    """Masks drawn per step, unit and row (h's first, then c's), 1 meaning: keep the previous value."""
    module = textrnn_module(cell, backend="scratch", zoneout=0.4).train()
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    torch.manual_seed(9)
    output, _ = module(inputs)
    torch.manual_seed(9)
    keep_hidden = torch.empty(LENGTH, BATCH_SIZE, HIDDEN_SIZE).bernoulli_(0.4)
    keep_cell = torch.empty(LENGTH, BATCH_SIZE, HIDDEN_SIZE).bernoulli_(0.4) if cell == "lstm" else None
    torch.testing.assert_close(output, naive_zoneout(cell, module, inputs, keep_hidden, keep_cell), **TOLERANCE)
    assert not torch.equal(module(inputs)[0], module(inputs)[0])  # new masks every call


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm", "peephole_lstm", "layernorm_lstm", "layernorm_gru"])
def test_zoneout_zero_is_the_plain_cell(cell):
    if cell.startswith("layernorm"):
        plain, zoned = layernorm_module(cell, num_layers=2), layernorm_module(cell, num_layers=2, zoneout=0.0)
    else:
        plain = textrnn_module(cell, backend="scratch", num_layers=2)
        zoned = textrnn_module(cell, backend="scratch", num_layers=2, zoneout=0.0)
    zoned.load_state_dict(plain.state_dict())
    inputs = torch.randn(LENGTH, BATCH_SIZE, INPUT_SIZE)
    torch.testing.assert_close(zoned.train()(inputs)[0], plain.train()(inputs)[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm", "layernorm_lstm"])
def test_zoneout_near_one_keeps_the_initial_state(cell):
    """The other limit: with z close to 1 almost every unit keeps its previous value, so the state barely moves."""
    module = make_encoder(cell, INPUT_SIZE, HIDDEN_SIZE, 1, 0.0, backend="scratch", zoneout=0.999).eval()
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    output, _ = module(inputs)
    assert output.abs().max() < 0.01  # from the zero state, each step moves it by 0.1 % of the plain update


@pytest.mark.parametrize("cell", ["gru", "lstm", "peephole_lstm", "layernorm_lstm", "layernorm_gru"])
def test_zoneout_and_layernorm_pass_gradcheck(cell):
    module = make_encoder(cell, 2, 3, 1, 0.0, backend="scratch", bidirectional=True, zoneout=0.3).double().eval()
    module.batch_first = False
    check_gradients(module, torch.randn(3, 2, 2, dtype=torch.float64))


def test_zoneout_exists_in_scratch_form_only():
    with pytest.raises(TextrnnError, match=r"zoneout \(--zoneout 0.1\) exists only in scratch form: use --backend"):
        make_encoder("lstm", INPUT_SIZE, HIDDEN_SIZE, 1, 0.0, backend="fused", zoneout=0.1)
    with pytest.raises(TextrnnError, match="use --backend scratch"):
        LSTM(INPUT_SIZE, HIDDEN_SIZE, zoneout=0.1)


@pytest.mark.parametrize(
    "cell, options",
    [
        ("lstm", {"zoneout": 0.2}),
        ("gru", {"zoneout": 0.2}),
        ("layernorm_lstm", {}),
        ("layernorm_gru", {"zoneout": 0.1}),
    ],
)
def test_one_step_generation_of_the_new_cells_matches_the_whole_sequence(cell, options):
    encoder = make_encoder(cell, INPUT_SIZE, HIDDEN_SIZE, 2, 0.0, backend="scratch", **options).eval()
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    expected, expected_state = encoder(inputs)
    state, outputs = None, []
    for step in range(LENGTH):
        output, state = encoder.step(inputs[:, step], state)
        outputs.append(output)
    torch.testing.assert_close(torch.stack(outputs, dim=1), expected, **TOLERANCE)
    for actual, wanted in zip(as_tuple(state), as_tuple(expected_state), strict=True):
        torch.testing.assert_close(actual, wanted, **TOLERANCE)


@pytest.mark.parametrize("cell", ["peephole_lstm", "layernorm_lstm", "layernorm_gru"])
def test_weight_drop_and_locked_dropout_on_the_scratch_only_cells(cell):
    encoder = make_encoder(
        cell, INPUT_SIZE, HIDDEN_SIZE, 2, 0.0, backend="scratch", weight_drop=0.5, locked_dropout=0.3, zoneout=0.1
    )
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    inputs = torch.randn(BATCH_SIZE, LENGTH, INPUT_SIZE)
    output, _ = encoder.train()(inputs)
    output.sum().backward()
    assert not torch.equal(output, encoder(inputs)[0])
    assert all(torch.equal(encoder.state_dict()[name], value) for name, value in before.items())
    assert encoder.weight_hh_l1.grad.abs().sum() > 0
    encoder.eval()
    assert torch.equal(encoder(inputs)[0], encoder(inputs)[0])
