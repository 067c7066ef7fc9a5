import json
import math

import pytest
import torch

from textrnn import generate, load_checkpoint
from textrnn.config import ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.task import train
from textrnn.train.schedule import learning_rate
from textrnn.train.step import cpu_has_bf16

from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN, TRAIN_JSON_KEYS


def configs(corpus, model=None, **train_options):
    return ModelConfig(**{**TINY_MODEL, **(model or {})}), TrainConfig(
        corpus=str(corpus), **{**TINY_TRAIN, **train_options}
    )


def test_summary_has_the_documented_keys_and_the_run_directory_is_complete(tiny_corpus, tmp_path):
    summary = train(*configs(tiny_corpus), tmp_path / "run")
    assert set(TRAIN_JSON_KEYS) <= set(summary)
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 2 * 8
    assert {p.name for p in (tmp_path / "run").iterdir()} == {
        "config.json",
        "tokenizer.json",
        "last.pt",
        "best.pt",
        "metrics.jsonl",
    }
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert summary["best_val_perplexity"] == min(r["val_perplexity"] for r in records)


def test_a_tiny_model_memorises_a_200_character_corpus(tiny_corpus, tmp_path):
    model_config, train_config = configs(
        tiny_corpus,
        model={"hidden_size": 64, "embedding_size": 16},
        batch_size=4,
        num_steps=16,
        optimizer="adam",
        lr=0.01,
        schedule="constant",
        max_steps=400,
        eval_every=100,
        weight_decay=0.0,
    )
    summary = train(model_config, train_config, tmp_path / "run")
    assert summary["train_perplexity"] < 1.3
    model = load_checkpoint(tmp_path / "run", weights="last")
    text = generate(model, TINY_TEXT[:40], length=60, greedy=True)[0]
    assert text == TINY_TEXT[:100]


@pytest.mark.parametrize("partition", ["sequential", "random"])
def test_an_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tiny_corpus, tmp_path, partition):
    model_config, train_config = configs(
        tiny_corpus, model={"num_layers": 2, "dropout": 0.2}, partition=partition, max_steps=12, eval_every=4
    )
    straight = train(model_config, train_config, tmp_path / "straight")

    calls = []

    def stop_after_five():
        calls.append(1)
        return len(calls) == 5

    first = train(model_config, train_config, tmp_path / "resumed", should_stop=stop_after_five)
    assert first["interrupted"] and first["steps"] == 5
    resumed = train(model_config, train_config, tmp_path / "resumed", resume=True)
    assert resumed["steps"] == straight["steps"] == 12

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_perplexity"] == straight["val_perplexity"]


def test_a_second_run_into_the_same_directory_is_refused(tiny_corpus, tmp_path):
    train(*configs(tiny_corpus), tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(TextrnnError, match="already holds a run"):
        train(*configs(tiny_corpus), tmp_path / "run")
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_corpus_too_short_for_one_batch_is_an_error_before_anything_is_written(tiny_corpus, tmp_path):
    with pytest.raises(TextrnnError, match="smaller --batch-size"):
        train(*configs(tiny_corpus, batch_size=64), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_warm_up_then_cosine_decay():
    config = TrainConfig(lr=1.0, warmup_steps=10, max_steps=100, max_seconds=0)
    assert learning_rate(config, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(config, 9, 0.09) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.09)))
    assert learning_rate(config, 50, 0.5) == pytest.approx(0.5)
    assert learning_rate(config, 99, 1.0) == pytest.approx(0.0)
    constant = TrainConfig(lr=0.3, warmup_steps=0, schedule="constant")
    assert learning_rate(constant, 1000, 0.9) == 0.3


def test_the_default_budget_applies_only_when_no_limit_is_given():
    from textrnn.config import DEFAULT_EPOCHS, DEFAULT_SECONDS, with_limits

    default = TrainConfig()
    assert (default.epochs, default.max_steps, default.max_seconds) == (DEFAULT_EPOCHS, None, DEFAULT_SECONDS)
    steps_only = TrainConfig(max_steps=5)
    assert (steps_only.epochs, steps_only.max_steps, steps_only.max_seconds) == (None, 5, None)
    assert with_limits(default) is default
    longer = with_limits(default, max_seconds=600)
    assert (longer.epochs, longer.max_steps, longer.max_seconds) == (None, None, 600)
    with pytest.raises(TextrnnError, match="no end"):
        TrainConfig(max_seconds=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bf16_training_follows_fp32_closely(tiny_corpus, tmp_path, cell):
    """The opt-in fast path: the same tiny run under bf16 autocast ends near the fp32 one. A CPU without bf16
    instructions refuses the fused LSTM under bf16 (oneDNN cannot run it) with one clear line."""
    results = {}
    if cell == "lstm" and not cpu_has_bf16():
        model_config, train_config = configs(tiny_corpus, model={"cell": cell}, precision="bf16", max_steps=3)
        with pytest.raises(TextrnnError, match="needs a CPU with bf16 instructions.*--backend scratch"):
            train(model_config, train_config, tmp_path / "refused")
        assert not (tmp_path / "refused" / "config.json").exists()  # refused before the run directory is made
        return
    for precision in ("fp32", "bf16"):
        model_config, train_config = configs(
            tiny_corpus, model={"cell": cell, "hidden_size": 32}, precision=precision, max_steps=30, eval_every=30
        )
        results[precision] = train(model_config, train_config, tmp_path / precision)["val_perplexity"]
    assert math.isfinite(results["bf16"]) and abs(results["bf16"] / results["fp32"] - 1) < 0.05, results
