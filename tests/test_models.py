import pytest
import torch

from textrnn.config import ModelConfig
from textrnn.errors import TextrnnError
from textrnn.models import CharLM
from textrnn.nn import detach_state


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_shapes_and_state_for_every_cell(cell, one_hot):
    config = ModelConfig(
        vocab_size=11, cell=cell, hidden_size=8, num_layers=2, dropout=0.0, embedding_size=5, one_hot=one_hot
    )
    model = CharLM(config)
    tokens = torch.randint(0, 11, (3, 7))
    logits, state = model(tokens)
    assert logits.shape == (3, 7, 11)
    states = state if isinstance(state, tuple) else (state,)
    assert all(s.shape == (2, 3, 8) for s in states)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_carrying_the_state_equals_one_long_forward(cell):
    model = CharLM(
        ModelConfig(vocab_size=9, cell=cell, hidden_size=8, num_layers=2, dropout=0.0, embedding_size=4)
    ).eval()
    tokens = torch.randint(0, 9, (2, 12))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :5])
    second, _ = model(tokens[:, 5:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-6)


def test_detach_state_cuts_the_graph_of_nested_states():
    h = torch.ones(2, requires_grad=True) * 2
    c = torch.ones(2, requires_grad=True) * 3
    detached = detach_state((h, c))
    assert isinstance(detached, tuple) and not any(part.requires_grad for part in detached)
    assert detach_state(None) is None


@pytest.mark.parametrize(
    "options, message",
    [
        ({"hidden_size": -5}, "--hidden-size"),
        ({"num_layers": 0}, "--num-layers"),
        ({"dropout": 1.0}, "--dropout"),
        ({"cell": "transformer"}, "unknown cell"),
    ],
)
def test_impossible_sizes_are_refused(options, message):
    with pytest.raises(TextrnnError, match=message):
        ModelConfig(vocab_size=5, **options)


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("backend", ["fused", "scratch"])
def test_an_infill_model_never_sees_the_token_it_predicts(num_layers, backend):
    config = ModelConfig(
        vocab_size=7,
        hidden_size=8,
        num_layers=num_layers,
        dropout=0.0,
        embedding_size=4,
        bidirectional=True,
        task="infill",
        backend=backend,
    )
    model = CharLM(config).eval()
    tokens = torch.randint(0, 7, (2, 9))
    embedding = model.embedding
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["features"] = output
        return output

    embedding.register_forward_hook(keep)
    logits, _ = model(tokens)
    for position in range(9):
        captured["features"].grad = None
        logits[:, position].sum().backward(retain_graph=True)
        gradient = captured["features"].grad
        assert torch.all(gradient[:, position] == 0)  # not from itself
        assert position == 0 or gradient[:, :position].abs().sum() > 0  # from the left
        assert position == 8 or gradient[:, position + 1 :].abs().sum() > 0  # and from the right


def test_bidirectional_next_character_modelling_is_refused_with_the_reason():
    with pytest.raises(TextrnnError, match="reads the very character.*--task infill"):
        ModelConfig(vocab_size=5, bidirectional=True)
    with pytest.raises(TextrnnError, match="add --bidirectional"):
        ModelConfig(vocab_size=5, task="infill")


def test_deep_output_adds_layers_between_state_and_head():
    model = CharLM(ModelConfig(vocab_size=5, hidden_size=8, num_layers=1, embedding_size=4, output_depth=3))
    assert len(model.output_layers) == 2
    logits, _ = model(torch.randint(0, 5, (2, 3)))
    assert logits.shape == (2, 3, 5)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu", "peephole_lstm"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_one_step_generation_matches_the_whole_sequence(cell, one_hot):
    """The per-step path of sampling (torch's fused cell kernels) gives the logits of a full forward pass."""
    model = CharLM(ModelConfig(vocab_size=11, cell=cell, hidden_size=16, num_layers=2, one_hot=one_hot)).eval()
    tokens = torch.randint(0, 11, (3, 7))
    with torch.no_grad():
        expected, expected_state = model(tokens)
        state, steps = None, []
        for position in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, position], state)
            steps.append(logits)
    assert torch.allclose(torch.stack(steps, dim=1), expected, atol=1e-5)
    for got, want in zip(
        state if isinstance(state, tuple) else (state,),
        expected_state if isinstance(expected_state, tuple) else (expected_state,),
    ):
        assert torch.allclose(got, want, atol=1e-5)
