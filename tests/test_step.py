"""The training step: the CUDA-graph body (static buffers, the state copied in place, a device-side learning rate)
against the plain eager step, run eagerly on the CPU; the rules for when graphs are used; CUDA tests skip here."""

import math

import pytest
import torch
from torch.nn import functional as F

from textrnn.config import ForecastConfig, ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.model import CharLM
from textrnn.nn import detach_state
from textrnn.text.batching import Batches
from textrnn.train.step import Step, build_optimizer, check_precision, graph_obstacle

from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def language_model_loss(model, batch, state):
    inputs, targets = batch
    logits, state = model(inputs, state)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)), state


def run_steps(graph: bool, cell: str, epochs: int = 3):
    """Train a tiny language model for a few epochs with a changing learning rate; (losses, weights)."""
    torch.manual_seed(0)
    model = CharLM(ModelConfig(**{**TINY_MODEL, "cell": cell, "num_layers": 2, "dropout": 0.2}, vocab_size=30))
    config = TrainConfig(**{**TINY_TRAIN, "optimizer": "adamw"})
    optimizer = build_optimizer(model, config, capturable=graph)
    step = Step(language_model_loss, True, model, model, optimizer, config, torch.device("cpu"), None if graph else "")
    step.emulate = graph
    tokens = torch.tensor([ord(c) % 30 for c in TINY_TEXT * 2])
    batches = Batches(tokens, 4, 8, "sequential", seed=0)
    losses, state, count = [], None, 0
    for epoch in range(epochs):
        for batch in batches.epoch(epoch):
            lr = 0.01 * (1 + math.cos(count / 7))  # a schedule that changes every step
            loss, state, norm, applied = step(batch, detach_state(state), lr)
            assert applied and torch.isfinite(norm)
            losses.append(float(loss.detach()))
            count += 1
        state = None  # each epoch starts from a fresh state
    return losses, model.state_dict(), step


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_graph_body_with_static_buffers_follows_the_eager_step(cell):
    eager_losses, eager_weights, _ = run_steps(False, cell)
    graph_losses, graph_weights, step = run_steps(True, cell)
    assert step.graph is not None and step.static["state"] is not None  # the static path really ran
    assert len(graph_losses) == len(eager_losses) > 20
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    for name, tensor in eager_weights.items():
        assert torch.allclose(graph_weights[name], tensor, atol=1e-5), name


def test_a_batch_of_another_shape_runs_eagerly_on_the_same_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    config = ForecastConfig(optimizer="adam", lr=0.1, max_steps=10)
    step = Step(
        lambda m, batch, state: (F.mse_loss(m(batch[0]).squeeze(1), batch[1]), None),
        False,
        model,
        model,
        build_optimizer(model, config, capturable=True),
        config,
        torch.device("cpu"),
        None,
        emulate=True,
    )
    data = torch.randn(40, 3), torch.randn(40)
    for start in range(0, 40, 8):
        step((data[0][start : start + 8], data[1][start : start + 8]), None, 0.1)
    captured = step.graph
    loss, _, _, applied = step((data[0][:5], data[1][:5]), None, 0.1)  # a short batch
    assert applied and step.graph is captured and math.isfinite(float(loss))
    assert not step._graphable((data[0][:5], data[1][:5]))


def test_graphs_are_used_where_valid_and_the_reason_is_said_where_not():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert graph_obstacle(TrainConfig(), cpu, False) == ""  # auto on a CPU: nothing to say
    assert graph_obstacle(TrainConfig(cuda_graphs="off"), gpu, False) == ""
    assert graph_obstacle(TrainConfig(), gpu, False) is None
    assert "needs a CUDA device" in graph_obstacle(TrainConfig(cuda_graphs="on"), cpu, False)
    assert "torchrun" in graph_obstacle(TrainConfig(), gpu, True)
    assert "fp16" in graph_obstacle(TrainConfig(precision="fp16"), gpu, False)
    assert "SGD" in graph_obstacle(TrainConfig(optimizer="sgd"), gpu, False)
    d2l = TrainConfig(optimizer="sgd", schedule="constant", warmup_steps=0)
    assert graph_obstacle(d2l, gpu, False) is None  # a constant learning rate can live in the graph


def test_precisions_are_checked_against_the_device():
    check_precision("bf16", torch.device("cpu"))
    for precision in ("fp16", "tf32"):
        with pytest.raises(TextrnnError, match="runs on CUDA GPUs"):
            check_precision(precision, torch.device("cpu"))
    with pytest.raises(TextrnnError, match="unknown --cuda-graphs"):
        TrainConfig(cuda_graphs="sometimes")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("cell,backend", [("lstm", "fused"), ("gru", "fused"), ("lstm", "scratch")])
def test_graphed_and_eager_training_agree_on_a_gpu(tiny_corpus, tmp_path, cell, backend):
    from textrnn.lm.task import train

    results = {}
    for graphs in ("on", "off"):
        model = ModelConfig(**{**TINY_MODEL, "cell": cell, "backend": backend, "num_layers": 2})
        options = {**TINY_TRAIN, "device": "cuda", "max_steps": 300, "eval_every": 100, "cuda_graphs": graphs}
        results[graphs] = train(model, TrainConfig(corpus=str(tiny_corpus), **options), tmp_path / graphs)
    assert results["on"]["val_perplexity"] == pytest.approx(results["off"]["val_perplexity"], rel=1e-3)


@cuda
@pytest.mark.gpu
def test_a_graphed_run_resumes_exactly_on_a_gpu(tiny_corpus, tmp_path):
    from textrnn.lm.task import train

    model = ModelConfig(**{**TINY_MODEL, "num_layers": 2, "dropout": 0.2})
    config = TrainConfig(corpus=str(tiny_corpus), **{**TINY_TRAIN, "device": "cuda", "max_steps": 40, "eval_every": 8})
    train(model, config, tmp_path / "straight")
    calls = []
    train(model, config, tmp_path / "resumed", should_stop=lambda: calls.append(1) or len(calls) == 17)
    train(model, config, tmp_path / "resumed", resume=True)
    weights = [torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("straight", "resumed")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("precision,backend", [("fp16", "fused"), ("bf16", "scratch"), ("tf32", "fused")])
def test_mixed_precision_on_a_gpu_follows_fp32(tiny_corpus, tmp_path, precision, backend):
    from textrnn.lm.task import train

    results = {}
    for name in ("fp32", precision):
        model = ModelConfig(**{**TINY_MODEL, "hidden_size": 32, "backend": backend})
        options = {**TINY_TRAIN, "device": "cuda", "max_steps": 60, "eval_every": 60, "precision": name}
        results[name] = train(model, TrainConfig(corpus=str(tiny_corpus), **options), tmp_path / name)
    assert abs(results[precision]["val_perplexity"] / results["fp32"]["val_perplexity"] - 1) < 0.05
