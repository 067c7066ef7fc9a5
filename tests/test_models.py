import dataclasses

import pytest
import torch

from textrnn.config import ModelConfig
from textrnn.errors import TextrnnError
from textrnn.lm.model import CharLM
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


# Regularizers of the AWD-LSTM family, weight tying, layer-normalized cells and zoneout in the model.

REGULARIZED = {
    "weight_drop": 0.3,
    "dropout_embedding": 0.2,
    "dropout_layers": 0.2,
    "dropout_output": 0.2,
    "embedding_dropout": 0.1,
}


def test_configs_of_runs_made_before_the_regularizers_still_load():
    """A config.json without the new keys builds the same model, parameter for parameter."""
    from textrnn.config import from_dict

    old = {
        "vocab_size": 11,
        "cell": "lstm",
        "hidden_size": 8,
        "num_layers": 2,
        "dropout": 0.3,
        "embedding_size": 4,
        "one_hot": False,
        "backend": "fused",
        "bidirectional": False,
        "transition_depth": 1,
        "output_depth": 1,
        "task": "causal",
    }
    config = from_dict(ModelConfig, old)
    assert not config.tie_weights and config.weight_drop == config.zoneout == 0.0
    model = CharLM(config)
    expected = ["embedding.weight"]
    for layer in (0, 1):
        expected += [f"encoder.{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert list(model.state_dict()) == [*expected, "head.weight", "head.bias"]


@pytest.mark.parametrize(
    "options, backend",
    [
        ({"cell": "layernorm_lstm"}, "scratch"),
        ({"cell": "layernorm_gru"}, "scratch"),
        ({"zoneout": 0.1}, "scratch"),
        ({"weight_drop": 0.5, "dropout_layers": 0.3}, "fused"),
    ],
)
def test_the_default_backend_follows_what_exists(options, backend):
    assert ModelConfig(vocab_size=5, **options).backend == backend


@pytest.mark.parametrize(
    "options, message",
    [
        ({"zoneout": 0.1, "backend": "fused"}, r"zoneout \(--zoneout 0.1\) exists only in scratch form"),
        ({"cell": "layernorm_gru", "backend": "fused"}, "layernorm_gru cell exists only in scratch form"),
        ({"weight_drop": 1.0}, r"--weight-drop must be in \[0, 1\)"),
        ({"dropout_layers": -0.1}, r"--dropout-layers must be in \[0, 1\)"),
        ({"dropout_embedding": 1.0}, r"--dropout-embedding must be in \[0, 1\)"),
        ({"dropout_output": 2.0}, r"--dropout-output must be in \[0, 1\)"),
        ({"embedding_dropout": 1.0}, r"--embedding-dropout must be in \[0, 1\)"),
        ({"tie_weights": True, "one_hot": True}, "act on the embedding: use --embedding"),
        ({"embedding_dropout": 0.1, "one_hot": True}, "act on the embedding: use --embedding"),
    ],
)
def test_impossible_regularizers_are_refused(options, message):
    with pytest.raises(TextrnnError, match=message):
        ModelConfig(vocab_size=5, **options)


@pytest.mark.parametrize("option", ["ar_alpha", "tar_beta"])
def test_negative_activation_regularization_is_refused(option):
    from textrnn.config import TrainConfig

    with pytest.raises(TextrnnError, match=f"--{option.replace('_', '-')} must be non-negative"):
        TrainConfig(**{option: -1.0})


@pytest.mark.parametrize("cell, backend", [("lstm", "fused"), ("gru", "scratch"), ("layernorm_lstm", "scratch")])
def test_every_regularizer_acts_in_training_only(cell, backend):
    zoneout = 0.1 if backend == "scratch" else 0.0
    config = ModelConfig(
        vocab_size=11,
        cell=cell,
        backend=backend,
        hidden_size=8,
        num_layers=2,
        embedding_size=4,
        dropout=0.0,
        zoneout=zoneout,
        **REGULARIZED,
    )
    model = CharLM(config)
    tokens = torch.randint(0, 11, (3, 7))
    assert not torch.equal(model.train()(tokens)[0], model(tokens)[0])
    model.eval()
    first, second = model(tokens)[0], model(tokens)[0]
    assert torch.equal(first, second)
    plain = CharLM(dataclasses.replace(config, **dict.fromkeys(REGULARIZED, 0.0), zoneout=0.0)).eval()
    plain.load_state_dict(model.state_dict())
    if zoneout == 0:  # without zoneout, evaluation is the plain model's: nothing is scaled
        torch.testing.assert_close(first, plain(tokens)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("embedding_size", [8, 4], ids=["same width", "projected"])
def test_tied_weights_share_one_matrix(embedding_size):
    model = CharLM(
        ModelConfig(vocab_size=11, hidden_size=8, num_layers=1, embedding_size=embedding_size, tie_weights=True)
    )
    names = [name for name, _ in model.named_parameters()]
    assert "embedding.weight" in names and not any(name.startswith("head.weight") for name in names)
    assert ("head.projection.weight" in names) == (embedding_size != 8)
    tokens = torch.randint(0, 11, (2, 5))
    before, _ = model(tokens)
    with torch.no_grad():
        model.embedding.weight[3] += 1.0  # the output row of token 3 moves with it
    after, _ = model(tokens)
    assert not torch.allclose(before[..., 3], after[..., 3])
    # (Its input row too, hence every logit changes where token 3 was read; the other rows of the head do not.)
    first_read = int((tokens == 3).int().argmax(1).min()) if (tokens == 3).any() else tokens.shape[1]
    torch.testing.assert_close(before[:, :first_read, :3], after[:, :first_read, :3])


def test_a_tied_model_is_saved_once_and_loaded_tied(tiny_corpus, tmp_path):
    from textrnn import load_checkpoint
    from textrnn.config import TrainConfig
    from textrnn.lm.task import train

    model_config = ModelConfig(hidden_size=8, num_layers=1, embedding_size=6, dropout=0.0, tie_weights=True)
    train_config = TrainConfig(
        corpus=str(tiny_corpus), device="cpu", batch_size=2, num_steps=8, max_seconds=0, max_steps=3, eval_every=3
    )
    train(model_config, train_config, tmp_path / "run")
    stored = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert "embedding.weight" in stored and not any(key.startswith("head.weight") for key in stored)
    model = load_checkpoint(tmp_path / "run", weights="last")
    assert torch.equal(model.embedding.weight, stored["embedding.weight"])
    matrices = [parameter for parameter in model.parameters() if parameter.shape == model.embedding.weight.shape]
    assert len(matrices) == 1  # one tensor, the embedding's, which the head reads at every call
    tokens = torch.randint(0, model.config.vocab_size, (1, 4))
    before = model(tokens)[0]
    with torch.no_grad():
        model.embedding.weight[:, 0] += 1.0
    assert not torch.allclose(before, model(tokens)[0])


def test_ar_and_tar_add_exactly_the_hand_computed_amount():
    from types import SimpleNamespace

    from textrnn.config import TrainConfig
    from textrnn.lm.task import LanguageModelTask

    off = {"weight_drop": 0.0, "dropout_embedding": 0.0, "dropout_layers": 0.0, "dropout_output": 0.0}
    model = CharLM(ModelConfig(vocab_size=5, hidden_size=3, num_layers=1, embedding_size=2, dropout=0.0, **off)).train()
    inputs, targets = torch.randint(0, 5, (2, 4)), torch.randint(0, 5, (2, 4))

    def loss(alpha, beta):
        task = SimpleNamespace(train_config=TrainConfig(ar_alpha=alpha, tar_beta=beta), infill=False)
        return LanguageModelTask.loss(task, model, (inputs, targets), None)[0].detach()

    outputs, _ = model.encoder(model.embedding(inputs))  # (B=2, T=4, H=3): the last layer's outputs
    squares = steps = 0.0
    for row in range(2):
        for step in range(4):
            for unit in range(3):
                squares += float(outputs[row, step, unit].detach()) ** 2
                if step:
                    steps += float(outputs[row, step, unit].detach() - outputs[row, step - 1, unit].detach()) ** 2
    expected = 0.5 * squares / (2 * 4 * 3) + 2.0 * steps / (2 * 3 * 3)
    plain = loss(0.0, 0.0)
    assert float(loss(0.5, 2.0) - plain) == pytest.approx(expected, rel=1e-5)
    assert float(loss(0.5, 0.0) - plain) == pytest.approx(0.5 * squares / 24, rel=1e-5)


@pytest.mark.parametrize(
    "model_options",
    [
        {"cell": "lstm", "backend": "fused", **REGULARIZED},
        {"cell": "layernorm_gru", "zoneout": 0.1, "tie_weights": True, **REGULARIZED},
    ],
    ids=["fused", "scratch"],
)
def test_an_interrupted_and_resumed_run_with_every_regularizer_ends_exactly_alike(tiny_corpus, tmp_path, model_options):
    """Every mask comes from the RNG state saved with the checkpoint, so a resumed run draws the same ones."""
    from textrnn.config import TrainConfig
    from textrnn.lm.task import train

    model_config = ModelConfig(hidden_size=8, num_layers=2, embedding_size=8, dropout=0.1, **model_options)
    train_config = TrainConfig(
        corpus=str(tiny_corpus),
        device="cpu",
        batch_size=2,
        num_steps=8,
        max_seconds=0,
        max_steps=8,
        eval_every=4,
        warmup_steps=0,
        ar_alpha=1.0,
        tar_beta=1.0,
    )
    straight = train(model_config, train_config, tmp_path / "straight")
    calls = []
    first = train(
        model_config, train_config, tmp_path / "resumed", should_stop=lambda: calls.append(1) or len(calls) == 3
    )
    assert first["interrupted"] and first["steps"] == 3
    resumed = train(model_config, train_config, tmp_path / "resumed", resume=True)
    assert resumed["steps"] == straight["steps"] == 8
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert resumed["val_perplexity"] == straight["val_perplexity"]


@pytest.mark.parametrize(
    "options",
    [{"cell": "layernorm_lstm"}, {"cell": "layernorm_gru", "zoneout": 0.2}, {"tie_weights": True, **REGULARIZED}],
)
def test_one_step_generation_of_regularized_models_matches_the_whole_sequence(options):
    config = ModelConfig(vocab_size=11, hidden_size=8, num_layers=2, embedding_size=8, **options)
    model = CharLM(config).eval()
    tokens = torch.randint(0, 11, (3, 7))
    with torch.no_grad():
        expected, _ = model(tokens)
        state, steps = None, []
        for position in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, position], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, dim=1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"cell": "layernorm_lstm", "zoneout": 0.2, "tie_weights": True, "embedding_size": 4},
        {"cell": "layernorm_gru", "weight_drop": 0.3},
        {"cell": "lstm", "tie_weights": True, **REGULARIZED},
    ],
)
def test_regularized_models_export_to_onnx(options):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from textrnn import export

    config = ModelConfig(vocab_size=12, hidden_size=8, num_layers=2, dropout=0.0, **{"embedding_size": 8, **options})
    model = CharLM(config).eval()
    graph, names = export.language_model_graph(model)
    assert export.check_graph(graph, model, "causal", names) <= 1e-5


def test_a_run_directory_written_before_the_regularizers_loads(tiny_corpus, tmp_path):
    import json

    from textrnn import load_checkpoint
    from textrnn.config import TrainConfig
    from textrnn.lm.task import train

    model_config = ModelConfig(hidden_size=8, num_layers=2, embedding_size=4, dropout=0.0)
    train_config = TrainConfig(
        corpus=str(tiny_corpus), device="cpu", batch_size=2, num_steps=8, max_seconds=0, max_steps=2, eval_every=2
    )
    train(model_config, train_config, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    new_model_keys = {"weight_drop", "dropout_embedding", "dropout_layers", "dropout_output", "embedding_dropout"}
    new_model_keys |= {"tie_weights", "zoneout"}
    assert new_model_keys <= set(config["model"]) and {"ar_alpha", "tar_beta"} <= set(config["train"])
    config["model"] = {key: value for key, value in config["model"].items() if key not in new_model_keys}
    config["train"] = {key: value for key, value in config["train"].items() if key not in ("ar_alpha", "tar_beta")}
    path.write_text(json.dumps(config))
    model = load_checkpoint(tmp_path / "run")
    assert not model.config.tie_weights and model.config.weight_drop == 0.0
    train(model_config, TrainConfig(**{**train_config.__dict__, "max_steps": 4}), tmp_path / "run", resume=True)
