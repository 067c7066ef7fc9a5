"""minGRU and minLSTM (parallel scan) and the Mogrifier LSTM: equations, carried state, steps, gradients,
and every tool that takes a cell (training, resume, sampling, serving, export)."""

import json
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.func import functional_call

from textrnn import export, generate, load_checkpoint
from textrnn.cli import cli
from textrnn.config import ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.model import CharLM
from textrnn.lm.task import train
from textrnn.nn import LSTM, MogrifierLSTM, make_encoder
from textrnn.nn.cells import mogrify
from textrnn.nn.minimal import MinimalLayer, MinimalRNN, g, linear_scan, log_g, log_scan

from conftest import TINY_CLI, TINY_MODEL, TINY_TRAIN

SHAPES = [("plain", 0), ("residual", 0), ("residual", 3)]


def naive_recurrence(cell: str, layer: MinimalLayer, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
    """The paper's equations, step by step in real space: (B, T, I) -> (B, T, H)."""
    outputs = []
    for t in range(x.shape[1]):
        projected = layer.projection(x[:, t])
        if cell == "mingru":
            hidden, gate = projected.chunk(2, dim=-1)
            z = torch.sigmoid(gate)
            previous = torch.zeros_like(z) if h is None else h
            h = (1 - z) * previous + z * g(hidden)
        else:
            forget, input_gate, hidden = projected.chunk(3, dim=-1)
            f, i = torch.sigmoid(forget), torch.sigmoid(input_gate)
            previous = torch.zeros_like(f) if h is None else h
            h = f / (f + i) * previous + i / (f + i) * g(hidden)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def test_log_g_is_the_log_of_g():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    torch.testing.assert_close(log_g(x), torch.log(g(x)))
    assert (g(x) > 0).all()


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("initial", [False, True])
def test_the_scan_follows_the_equations(cell, initial):
    torch.manual_seed(0)
    layer = MinimalLayer(cell, 5, 7).double()
    x = torch.randn(3, 40, 5, dtype=torch.float64)
    h0 = torch.rand(3, 7, dtype=torch.float64) + 0.1 if initial else None
    out, last = layer(x, h0)
    expected = naive_recurrence(cell, layer, x, h0)
    torch.testing.assert_close(out, expected.to(out.dtype), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last, out[:, -1])


def test_the_cpu_scan_is_the_log_space_scan_and_passes_gradcheck():
    torch.manual_seed(0)
    a = (torch.rand(2, 300, 3, dtype=torch.float64) * 0.98 + 0.01).requires_grad_()
    b = torch.rand(2, 300, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(linear_scan(a, b, h0), log_scan(a.log(), b.log(), h0))
    torch.testing.assert_close(linear_scan(a, b, None), log_scan(a.log(), b.log(), None))
    short = [tensor.detach()[:, :7].clone().requires_grad_() for tensor in (a, b)]
    assert torch.autograd.gradcheck(linear_scan, (*short, h0))


def test_the_scan_stays_finite_and_exact_over_long_chunks():
    """A chunk of thousands of steps (longer than the scan's blocks) with gates near 0 and 1."""
    torch.manual_seed(0)
    log_a = torch.nn.functional.logsigmoid(3 * torch.randn(2, 3000, 4))
    log_b = torch.nn.functional.logsigmoid(3 * torch.randn(2, 3000, 4))
    h = log_scan(log_a, log_b, torch.full((2, 4), 0.5))
    assert torch.isfinite(h).all()
    previous, expected = torch.full((2, 4), 0.5, dtype=torch.float64), []
    for t in range(3000):
        previous = log_a[:, t].double().exp() * previous + log_b[:, t].double().exp()
        expected.append(previous)
    torch.testing.assert_close(h.double(), torch.stack(expected, 1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("block, conv_kernel", SHAPES)
def test_one_chunk_of_2t_equals_two_chunks_of_t_with_the_state_carried(cell, block, conv_kernel):
    torch.manual_seed(0)
    stack = MinimalRNN(cell, 5, 8, 2, block=block, conv_kernel=conv_kernel).eval()
    x = torch.randn(3, 24, 5)
    whole, whole_state = stack(x)
    first, state = stack(x[:, :12])
    second, carried_state = stack(x[:, 12:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-5)
    pairs = zip(carried_state, whole_state) if conv_kernel else [(carried_state, whole_state)]
    for part, other in pairs:
        torch.testing.assert_close(part, other, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("block, conv_kernel", SHAPES)
def test_the_step_function_equals_the_scan(cell, block, conv_kernel):
    torch.manual_seed(1)
    stack = MinimalRNN(cell, 5, 8, 3, block=block, conv_kernel=conv_kernel).eval()
    x = torch.randn(2, 15, 5)
    whole, _ = stack(x)
    state, steps = None, []
    for t in range(15):
        out, state = stack.step(x[:, t], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, dim=1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_scan_passes_gradcheck(cell):
    torch.manual_seed(0)
    stack = MinimalRNN(cell, 3, 4, 2, block="residual", conv_kernel=2).double()
    names = [name for name, _ in stack.named_parameters()]
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    h0 = (torch.rand(2, 2, 4, dtype=torch.float64) + 0.2).requires_grad_()
    past = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)

    def function(x, h0, past, *parameters):
        out, (h, conv) = functional_call(stack, dict(zip(names, parameters)), (x, (h0, past)))
        return out, h, conv

    parameters = [p.detach().clone().requires_grad_() for p in stack.parameters()]
    assert torch.autograd.gradcheck(function, (x, h0, past, *parameters))


def test_dropout_between_layers_acts_in_training_only():
    stack = MinimalRNN("mingru", 4, 6, 3, dropout=0.5, locked_dropout=0.5)
    x = torch.randn(2, 5, 4)
    stack.train()
    assert not torch.equal(stack(x)[0], stack(x)[0])
    stack.eval()
    assert torch.equal(stack(x)[0], stack(x)[0])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cell": "mingru", "weight_drop": 0.2}, "no recurrent matrices|recurrent matrices, which"),
        ({"cell": "minlstm", "transition_depth": 2}, "no recurrent matrix"),
        ({"cell": "mingru", "zoneout": 0.1}, "no recurrent matrix"),
        ({"cell": "mingru", "backend": "fused"}, "scratch form"),
        ({"cell": "mingru", "block": "plain", "conv_kernel": 4}, "residual block"),
        ({"cell": "mingru", "block": "tower"}, "unknown --block"),
        ({"cell": "mogrifier", "mogrify_rounds": -1}, "--mogrify-rounds"),
    ],
)
def test_what_the_new_cells_cannot_do_is_refused_in_one_line(options, message):
    with pytest.raises(TextrnnError, match=message):
        ModelConfig(vocab_size=10, **options)


def test_the_weight_drop_default_follows_the_cell():
    assert ModelConfig(cell="lstm").weight_drop == 0.2
    assert ModelConfig(cell="mingru").weight_drop == 0.0
    assert ModelConfig(cell="minlstm", weight_drop=0.0).weight_drop == 0.0


def test_a_bidirectional_minimal_encoder_is_refused_but_infill_reads_each_side_with_its_own_stack():
    with pytest.raises(TextrnnError, match="forward only"):
        make_encoder("mingru", 4, 4, 1, 0.0, backend="scratch", bidirectional=True)
    model = CharLM(ModelConfig(vocab_size=10, cell="mingru", task="infill", bidirectional=True, **TINY_MODEL))
    logits, _ = model(torch.randint(0, 10, (2, 7)))
    assert logits.shape == (2, 7, 10)


# ------------------------------------------------------------------------------------------ the Mogrifier LSTM


def test_the_mogrifier_with_no_rounds_is_the_lstm():
    torch.manual_seed(0)
    mogrifier = MogrifierLSTM(5, 7, num_layers=2, batch_first=True, bidirectional=True, mogrify_rounds=0)
    reference = torch.nn.LSTM(5, 7, num_layers=2, batch_first=True, bidirectional=True)
    reference.load_state_dict(mogrifier.state_dict())
    x = torch.randn(3, 6, 5, requires_grad=True)
    ours, (h, c) = mogrifier(x)
    theirs, (h_ref, c_ref) = reference(x)
    for a, b in ((ours, theirs), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    grad_ours = torch.autograd.grad(ours.sum(), [x, *mogrifier.parameters()])
    grad_theirs = torch.autograd.grad(theirs.sum(), [x, *reference.parameters()])
    for a, b in zip(grad_ours, grad_theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mogrify_follows_its_equations():
    torch.manual_seed(0)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    q1, r2, q3 = torch.randn(3, 4), torch.randn(4, 3), torch.randn(3, 4)
    x1 = 2 * torch.sigmoid(h @ q1.T) * x
    h2 = 2 * torch.sigmoid(x1 @ r2.T) * h
    x3 = 2 * torch.sigmoid(h2 @ q3.T) * x1
    ours_x, ours_h = mogrify(x, h, [q1, r2, q3])
    torch.testing.assert_close(ours_x, x3)
    torch.testing.assert_close(ours_h, h2)
    left, right = torch.randn(3, 2), torch.randn(2, 4)  # a low-rank Q = left @ right
    torch.testing.assert_close(mogrify(x, h, [(left, right)])[0], mogrify(x, h, [left @ right])[0])


@pytest.mark.parametrize("rank", [0, 2])
def test_the_mogrifier_passes_gradcheck_full_and_low_rank(rank):
    torch.manual_seed(0)
    module = MogrifierLSTM(3, 4, num_layers=2, mogrify_rounds=4, mogrify_rank=rank).double()
    names = [name for name, _ in module.named_parameters()]
    assert any(("_left_" in name) == bool(rank) for name in names if "mogrify" in name)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    def function(x, *parameters):
        out, (h, c) = functional_call(module, dict(zip(names, parameters)), (x,))
        return out, h, c

    parameters = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert torch.autograd.gradcheck(function, (x, *parameters))


def test_mogrifier_parameters_are_named_per_round_layer_and_direction_and_load_lstm_weights():
    module = MogrifierLSTM(3, 4, num_layers=2, bidirectional=True, mogrify_rounds=3, mogrify_rank=2)
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters() if "mogrify" in name}
    assert shapes["weight_mogrify0_left_l0"] == (3, 2) and shapes["weight_mogrify0_right_l0"] == (2, 4)
    assert shapes["weight_mogrify1_left_l1_reverse"] == (4, 2) and shapes["weight_mogrify1_right_l1_reverse"] == (2, 8)
    assert len(shapes) == 3 * 2 * 2 * 2
    lstm = LSTM(3, 4, num_layers=2, bidirectional=True)
    missing, unexpected = module.load_state_dict(lstm.state_dict(), strict=False)
    assert not unexpected and set(missing) == set(shapes)


# ------------------------------------------------------------------------------------------ the tools


@pytest.mark.parametrize(
    "cell, extra",
    [
        ("mingru", {}),
        ("minlstm", {"conv_kernel": 3}),
        ("mingru", {"block": "plain", "tie_weights": True, "embedding_size": 8}),
        ("mogrifier", {"mogrify_rounds": 3, "mogrify_rank": 2}),
    ],
)
def test_the_new_cells_train_resume_exactly_and_sample_incrementally(tiny_corpus, tmp_path, cell, extra):
    model_config = ModelConfig(**{**TINY_MODEL, "cell": cell, "num_layers": 2, "dropout_layers": 0.2, **extra})
    train_config = TrainConfig(corpus=str(tiny_corpus), **{**TINY_TRAIN, "average": "ema"})
    whole = train(model_config, train_config, tmp_path / "whole")
    calls = []
    train(model_config, train_config, tmp_path / "resumed", should_stop=lambda: calls.append(1) or len(calls) == 4)
    resumed = train(model_config, train_config, tmp_path / "resumed", resume=True)
    assert resumed["val_perplexity"] == whole["val_perplexity"]
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    model = load_checkpoint(tmp_path / "whole")
    text = generate(model, "the time", length=30, greedy=True)[0]
    tokens = torch.as_tensor(model.tokenizer.encode(text)).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(tokens)
    greedy = logits[0, len("the time") - 1 : -1].argmax(-1)  # what the whole-text forward predicts next
    assert model.tokenizer.decode(greedy.tolist()) == text[len("the time") :]


@pytest.mark.parametrize(
    "cell, extra", [("mingru", {}), ("minlstm", {"conv_kernel": 4}), ("mogrifier", {"mogrify_rounds": 2})]
)
def test_the_new_cells_export_to_onnx(cell, extra):
    config = ModelConfig(vocab_size=12, cell=cell, hidden_size=8, num_layers=2, embedding_size=8, **extra)
    model = CharLM(config).eval()
    graph, names = export.language_model_graph(model)
    assert export.check_graph(graph, model, "causal", names) <= 1e-5


def test_the_new_cells_from_the_command_line_and_the_server(tiny_corpus):
    from textrnn.serve.engine import Engine
    from textrnn.serve.request import Limits, parse_request

    runner = CliRunner()
    options = [*TINY_CLI, "--weight-drop", "0", "--max-steps", "4", "--eval-every", "2"]
    command = ["train", "--corpus", str(tiny_corpus), "--cell", "mingru", "--conv-kernel", "2", *options]
    result = runner.invoke(cli, command)
    assert result.exit_code == 0, result.output
    refused = ["train", "--corpus", str(tiny_corpus), "--cell", "mingru", "--weight-drop", "0.3", "--out", "r"]
    result = runner.invoke(cli, refused)
    assert result.exit_code == 1 and "error: --weight-drop drops entries of the recurrent matrices" in result.stderr
    model = load_checkpoint()
    assert model.config.cell == "mingru" and model.config.conv_kernel == 2
    engine = Engine(model, model.tokenizer, Limits())
    engine.start()
    try:
        body = json.dumps({"prompt": "the ti", "max_tokens": 20, "greedy": True}).encode()
        handle = engine.submit(parse_request(body, "m", model.tokenizer, Limits()))
        deadline = time.time() + 30
        while not handle.done and time.time() < deadline:
            time.sleep(0.005)
        served = "".join(text for _, text, _ in handle.outbox)
    finally:
        engine.close()
    assert served == generate(model, "the ti", length=20, greedy=True)[0][len("the ti") :]
    assert np.isfinite(json.loads(runner.invoke(cli, ["eval", "--json"]).stdout)["perplexity"])
