"""The one trainer on a fake task without any recurrent model: limits, events, exact resume, early stopping."""

import json
import math

import pytest
import torch

from textrnn.config import ForecastConfig, ModelConfig, TrainConfig
from textrnn.lm.task import LanguageModelTask, train
from textrnn.train.distributed import World
from textrnn.train.task import Task
from textrnn.train.trainer import fit

from conftest import TINY_MODEL, TINY_TRAIN


class LinearTask(Task):
    """Least squares on 40 fixed points, in batches of 8 shuffled rows; the validation metric is scripted
    (``scores``) when given, else the mean squared error on 16 other points."""

    metric = "mse"
    unit = "rows"
    carries_state = False
    even_rows = False
    batch_size = 8
    per_epoch = 5

    def __init__(self, scores=None):
        generator = torch.Generator().manual_seed(1)
        self.inputs = torch.randn(56, 3, generator=generator)
        self.targets = self.inputs @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(56, generator=generator)
        self.scores = list(scores) if scores is not None else None
        self.validations = 0

    def build_model(self):
        return torch.nn.Linear(3, 1)

    def batches(self, epoch, start):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(epoch))
        for batch in range(start, self.per_epoch):
            yield (order[batch * 8 : (batch + 1) * 8],)

    def loss(self, model, batch, state):
        rows = batch[0]
        return torch.nn.functional.mse_loss(model(self.inputs[rows]).squeeze(1), self.targets[rows]), None

    def validate(self, model):
        self.validations += 1
        if self.scores is not None:
            return {"val_mse": self.scores.pop(0)}
        with torch.no_grad():
            return {
                "val_mse": float(torch.nn.functional.mse_loss(model(self.inputs[40:]).squeeze(1), self.targets[40:]))
            }

    def invalid_validation(self, step):
        return f"the validation error is not finite at step {step}"

    def train_figures(self, mean_loss):
        return {"train_mse": mean_loss}


def config(**options):
    # ForecastConfig carries every trainer setting (optimizer, limits, schedule, patience) and needs no data.
    defaults = {"lr": 0.05, "warmup_steps": 0, "eval_every": 5, "patience": 0, "device": "cpu", "max_steps": 20}
    return ForecastConfig(**{**defaults, **options})


def run(task, out, events=None, **options):
    callback = (lambda event, info: events.append((event, info))) if events is not None else None
    return fit(
        task, config(**options), out, world=World(), device=torch.device("cpu"), run_config={}, callback=callback
    )


def test_a_step_limit_is_exact_and_the_events_follow_the_run(tmp_path):
    events = []
    result = run(LinearTask(), tmp_path / "run", events, max_steps=12)
    assert result["steps"] == 12 and result["rows"] == 12 * 8
    assert result["epochs"] == pytest.approx(12 / 5)
    names = [event for event, _ in events]
    assert names[0] == "start" and names[-1] == "end" and names.count("step") == 12
    assert [info["step"] for event, info in events if event == "eval"] == [5, 10, 12]  # and one at the end
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 12]
    assert {"train_mse", "val_mse", "best_val_mse", "rows_per_sec", "lr"} <= set(records[0])
    assert result["last_val"]["val_mse"] < records[0]["val_mse"]  # it learns


def test_an_epoch_limit_counts_whole_epochs(tmp_path):
    result = run(LinearTask(), tmp_path / "run", epochs=3, max_steps=None)
    assert result["steps"] == 3 * 5 and result["epochs"] == 3


def test_a_stopped_and_resumed_run_ends_exactly_like_a_straight_one(tmp_path):
    straight = run(LinearTask(), tmp_path / "straight", max_steps=17)
    calls = []
    first = fit(
        LinearTask(),
        config(max_steps=17),
        tmp_path / "resumed",
        world=World(),
        device=torch.device("cpu"),
        run_config={},
        should_stop=lambda: calls.append(1) or len(calls) == 7,
    )
    assert first["interrupted"] and first["steps"] == 7
    resumed = fit(
        LinearTask(), config(max_steps=17), tmp_path / "resumed", world=World(), device=torch.device("cpu"), resume=True
    )
    assert resumed["steps"] == straight["steps"] == 17
    weights = [torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("straight", "resumed")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_early_stopping_after_patience_validations_without_a_gain(tmp_path):
    events = []
    task = LinearTask(scores=[3.0, 2.0, 2.5, 2.0, 1.0, 0.5])
    result = run(task, tmp_path / "run", events, max_steps=100, patience=2)
    # 3.0 and 2.0 improve; 2.5 and 2.0 (not lower) do not: the second one in a row stops the run.
    assert result["stopped_early"] and result["steps"] == 20 and task.validations == 4
    assert result["best_val"] == 2.0
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["step"] == 10
    assert [info["stopped_early"] for event, info in events if event == "eval"] == [False, False, False, True]


def test_no_early_stopping_without_patience(tmp_path):
    result = run(LinearTask(scores=[1.0] + [2.0] * 10), tmp_path / "run", max_steps=30)
    assert not result["stopped_early"] and result["steps"] == 30


def test_a_non_finite_validation_stops_with_the_tasks_reason_and_keeps_the_checkpoint(tmp_path):
    from textrnn.errors import TextrnnError

    with pytest.raises(TextrnnError, match="not finite at step 10; the last good checkpoint .* was kept"):
        run(LinearTask(scores=[1.0, math.nan]), tmp_path / "run")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["trainer"]["counters"]["step"] == 5


def test_language_models_stop_early_with_patience(tiny_corpus, tmp_path, monkeypatch):
    scripted = iter([5.0, 4.0, 4.5, 4.2, 3.0])
    monkeypatch.setattr(
        LanguageModelTask, "validate", lambda self, model: {"val_perplexity": next(scripted), "val_bits_per_char": 1.0}
    )
    options = {**TINY_TRAIN, "max_steps": 100, "eval_every": 3, "patience": 2}
    summary = train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **options), tmp_path / "run")
    assert summary["stopped_early"] and summary["steps"] == 12 and summary["best_val_perplexity"] == 4.0


def test_an_exponential_moving_average_follows_its_formula():
    from textrnn.train.averaging import WeightAverage

    model = torch.nn.Linear(2, 1)
    average = WeightAverage(model, "ema", decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        average.update(model)
        expected = [0.9 * e + 0.1 * value for e in expected]
    assert all(torch.allclose(w, e) for w, e in zip(average.weights, expected))
    uniform = WeightAverage(model, "asgd", decay=0.0)
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        uniform.update(model)
    assert all(torch.allclose(w, torch.full_like(w, 3.0)) for w in uniform.weights)
    with uniform.swapped_into(model):
        assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in model.parameters())
    assert all(torch.equal(p, torch.full_like(p, 6.0)) for p in model.parameters())  # its own weights again


def test_averaged_weights_become_best_when_they_win(tmp_path):
    events = []
    # Each validation scores the trained weights, then the averaged ones: the average wins at step 10.
    task = LinearTask(scores=[3.0, 2.9, 2.0, 1.0, 2.5, 2.4])
    result = run(task, tmp_path / "run", events, max_steps=15, average="ema", average_decay=0.5)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["avg_val_mse"] for r in records] == [2.9, 1.0, 2.4]
    assert result["best_val"] == 1.0
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["averaged"] and best["step"] == 10


def test_asgd_starts_averaging_after_validations_without_a_gain(tmp_path):
    task = LinearTask(scores=[3.0, 2.0, 2.5, 2.6, 2.7, 1.5, 2.8, 2.9])
    run(task, tmp_path / "run", max_steps=25, average="asgd", average_after=2)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Steps 15 and 20 gain nothing: the average starts after step 20 and is scored from step 25 on.
    assert ["avg_val_mse" in r for r in records] == [False, False, False, False, True]


def test_a_run_with_an_average_resumes_exactly(tmp_path):
    options = {"max_steps": 17, "average": "ema", "average_decay": 0.8}
    straight = fit(
        LinearTask(), config(**options), tmp_path / "a", world=World(), device=torch.device("cpu"), run_config={}
    )
    calls = []
    fit(
        LinearTask(), config(**options), tmp_path / "b", world=World(), device=torch.device("cpu"), run_config={},
        should_stop=lambda: calls.append(1) or len(calls) == 8,
    )  # fmt: skip
    resumed = fit(
        LinearTask(), config(**options), tmp_path / "b", world=World(), device=torch.device("cpu"), resume=True
    )
    assert resumed["best_val"] == straight["best_val"]
    states = [torch.load(tmp_path / run / "last.pt", weights_only=True)["trainer"]["average"] for run in ("a", "b")]
    assert states[0]["count"] == states[1]["count"] == 17
    assert all(torch.equal(x, y) for x, y in zip(states[0]["weights"], states[1]["weights"]))
