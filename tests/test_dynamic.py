"""Dynamic evaluation: each segment is scored before the model adapts to it, the trained weights come back,
the model does adapt to what it reads, and the command line reports both figures."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from textrnn import load_checkpoint
from textrnn.cli import cli
from textrnn.config import ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.dynamic import DynamicConfig, dynamic_sum
from textrnn.lm.evaluate import cross_entropy_sum
from textrnn.lm.model import CharLM
from textrnn.lm.task import train

from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN


@pytest.fixture
def run(tiny_corpus, tmp_path):
    directory = tmp_path / "run"
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **{**TINY_TRAIN, "max_steps": 30}), directory)
    return directory


def test_a_text_of_one_segment_scores_as_without_adaptation(run):
    """The only segment is scored before any step, so the figure is the static one."""
    model = load_checkpoint(run)
    tokens = torch.as_tensor(model.tokenizer.encode(TINY_TEXT[:9]))
    static, _ = cross_entropy_sum(model, tokens)
    dynamic, count = dynamic_sum(
        model, tokens, torch.as_tensor(model.tokenizer.encode(TINY_TEXT)), DynamicConfig(segment=8)
    )
    assert count == 8
    assert math.isclose(dynamic, float(static), rel_tol=1e-6)


def test_the_trained_weights_come_back_and_a_tiny_step_changes_nothing(run):
    model = load_checkpoint(run)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    tokens = torch.as_tensor(model.tokenizer.encode(TINY_TEXT * 2))
    static, _ = cross_entropy_sum(model, tokens)
    nearly, _ = dynamic_sum(model, tokens, tokens, DynamicConfig(lr=1e-12, decay=0.0))
    assert math.isclose(nearly, float(static), rel_tol=1e-5)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert not model.training


def test_the_model_adapts_to_the_text_it_reads():
    """An untrained model scoring the same seven characters over and over learns them as it goes."""
    torch.manual_seed(0)
    model = CharLM(ModelConfig(vocab_size=30, **TINY_MODEL)).eval()
    tokens = torch.randint(1, 30, (7,)).repeat(40)
    static, _ = cross_entropy_sum(model, tokens)
    dynamic, _ = dynamic_sum(model, tokens, tokens, DynamicConfig(lr=1e-2, segment=10))
    assert dynamic < 0.6 * float(static)


def test_an_infill_model_and_bad_settings_are_refused():
    model = CharLM(ModelConfig(vocab_size=10, task="infill", bidirectional=True, **TINY_MODEL))
    tokens = torch.randint(1, 10, (50,))
    with pytest.raises(TextrnnError, match="causal model"):
        dynamic_sum(model, tokens, tokens, DynamicConfig())
    for settings, message in (({"lr": 0}, "--dynamic-lr"), ({"segment": 0}, "--dynamic-segment")):
        with pytest.raises(TextrnnError, match=message):
            DynamicConfig(**settings)


def test_eval_dynamic_reports_both_figures_side_by_side(run):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "--checkpoint", str(run), "--split", "val", "--dynamic", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert {"cross_entropy", "perplexity", "bits_per_char", "tokens", "unknown_tokens"} <= set(figures)
    assert {"cross_entropy", "perplexity", "bits_per_char"} <= set(figures["dynamic"])
    assert figures["dynamic"]["segment"] == DynamicConfig.segment
    static = json.loads(runner.invoke(cli, ["eval", "--checkpoint", str(run), "--split", "val", "--json"]).stdout)
    assert static["perplexity"] == figures["perplexity"]  # the top-level figures stay static
    text = runner.invoke(cli, ["eval", "--checkpoint", str(run), "--dynamic", "--dynamic-segment", "3"]).stdout
    assert f"dynamic evaluation (lr {DynamicConfig.lr:g}, decay {DynamicConfig.decay:g}, segments of 3)" in text
    refused = runner.invoke(cli, ["eval", "--checkpoint", str(run), "--dynamic-lr", "0.1"])
    assert refused.exit_code == 1 and "add --dynamic" in refused.stderr
