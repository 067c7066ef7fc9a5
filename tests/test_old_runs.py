"""Run directories written by an earlier textrnn (tests/data/runs, made before the package was split into
subpackages) still load, score the same, sample, predict and resume."""

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from textrnn.cli import cli

RUNS = Path(__file__).parent / "data" / "runs"


def run_cli(*arguments) -> dict | str:
    result = CliRunner().invoke(cli, [str(argument) for argument in arguments])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in arguments else result.stdout


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def charlm(tmp_path, timemachine_dir) -> Path:
    run = tmp_path / "charlm"
    shutil.copytree(RUNS / "charlm", run)
    return run


@pytest.fixture
def forecaster(tmp_path) -> Path:
    """The forecasting run and its CSV, moved to a new place: config.json is pointed at the file's new path."""
    run = tmp_path / "forecast"
    shutil.copytree(RUNS / "forecast", run)
    csv = tmp_path / "sine.csv"
    shutil.copy(RUNS / "sine.csv", csv)
    config = json.loads((run / "config.json").read_text())
    config["forecast"]["csv"] = [str(csv)]
    config["data"]["files"][0]["path"] = str(csv)
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_an_old_language_model_scores_what_it_scored_when_trained(charlm):
    best = metrics(charlm)[-1]["best_val_perplexity"]
    result = run_cli("eval", "--checkpoint", charlm, "--split", "val", "--device", "cpu", "--json")
    assert math.isclose(result["perplexity"], best, rel_tol=1e-5)
    sample = run_cli("sample", "--checkpoint", charlm, "--prefix", "time traveller", "--length", "20", "--json")
    assert sample["samples"][0].startswith("time traveller") and len(sample["samples"][0]) == 34


def test_an_old_language_model_resumes_exactly(charlm, tmp_path):
    """Today's code retrains the stored run to the same figures, and both resume to the same figures."""
    stored = json.loads((charlm / "config.json").read_text())
    options = {**stored["model"], **stored["train"]}
    flags = [
        *("--hidden-size", options["hidden_size"], "--num-layers", options["num_layers"]),
        *("--embedding-size", options["embedding_size"], "--batch-size", options["batch_size"]),
        *("--num-steps", options["num_steps"], "--device", "cpu", "--eval-every", "3", "--max-steps", "6"),
    ]
    fresh = tmp_path / "fresh"
    run_cli("train", *flags, "--out", fresh, "--json")
    figures = ("val_perplexity", "avg_val_perplexity", "train_perplexity", "best_val_perplexity")
    before = metrics(charlm)
    assert [[record[key] for key in figures] for record in metrics(fresh)] == [
        [record[key] for key in figures] for record in before
    ]
    resumed = [run_cli("train", "--out", run, "--resume", "--max-steps", "9", "--json") for run in (charlm, fresh)]
    assert resumed[0]["steps"] == 9 and metrics(charlm)[: len(before)] == before
    assert resumed[0]["val_perplexity"] == resumed[1]["val_perplexity"]
    assert resumed[0]["best_val_perplexity"] == resumed[1]["best_val_perplexity"]


def test_an_old_forecaster_scores_predicts_and_resumes(forecaster):
    stored = json.loads((forecaster / "results.json").read_text())
    scored = run_cli("forecast", "eval", "--checkpoint", forecaster, "--json")
    assert math.isclose(scored["test"]["load"]["smape"], stored["test"]["load"]["smape"], rel_tol=1e-6)
    predicted = run_cli("forecast", "predict", "--checkpoint", forecaster, "--steps", "24")
    assert len(predicted.splitlines()) == 25
    resumed = run_cli("forecast", "train", "--out", forecaster, "--resume", "--max-steps", "30", "--json")
    assert resumed["steps"] == 30
