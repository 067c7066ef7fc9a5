"""Data-parallel training with torchrun: 2 gloo processes on the CPU follow the 1-process run."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import TINY_TEXT

OPTIONS = ["--device", "cpu", "--hidden-size", "16", "--num-layers", "2", "--embedding-size", "8", "--dropout", "0",
           "--batch-size", "4", "--num-steps", "8", "--eval-every", "4", "--threads", "1",
           "--weight-drop", "0", "--dropout-embedding", "0", "--dropout-layers", "0", "--dropout-output", "0"]  # fmt: skip


def train(corpus, out, processes: int, *extra):
    command = [sys.executable, "-m", "textrnn", "train", "--corpus", str(corpus), *OPTIONS, "--out", str(out), *extra]
    if processes > 1:
        command[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "textrnn"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT * 10, encoding="utf-8")
    return path


def test_two_processes_follow_one_with_the_same_global_batch(corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(corpus, one, 1, "--max-steps", "12").returncode == 0
    result = train(corpus, two, 2, "--max-steps", "12", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 12  # one process printed the summary
    for single, double in zip(metrics(one), metrics(two), strict=True):
        assert single["step"] == double["step"] and single["tokens"] == double["tokens"]
        for key in ("train_perplexity", "val_perplexity"):
            assert double[key] == pytest.approx(single[key], rel=1e-4), (key, single, double)
    weights = [torch.load(run / "last.pt", weights_only=True)["model"] for run in (one, two)]
    assert all(torch.allclose(weights[0][name], weights[1][name], atol=1e-5) for name in weights[0])


def test_a_distributed_run_resumes_exactly_with_its_world_size_only(corpus, tmp_path):
    run = tmp_path / "run"
    constant = ["--schedule", "constant", "--warmup-steps", "0"]  # so that the first limit does not shape the rate
    assert train(corpus, run, 2, "--max-steps", "4", *constant).returncode == 0
    result = train(corpus, run, 1, "--resume", "--max-steps", "8")
    assert result.returncode == 1 and "trained by 2 process(es) and is resumed by 1" in result.stderr
    result = train(corpus, run, 2, "--resume", "--max-steps", "8")
    assert result.returncode == 0, result.stderr
    assert metrics(run)[-1]["step"] == 8
    straight = tmp_path / "straight"  # the same 8 steps in one go: the resumed run ends exactly there
    assert train(corpus, straight, 2, "--max-steps", "8", *constant).returncode == 0
    weights = [torch.load(path / "last.pt", weights_only=True)["model"] for path in (run, straight)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def forecast(csv_path, out, processes: int, *extra):
    options = ["--csv", str(csv_path), "--time-col", "time", "--target", "load", "--lookback", "24",
               "--hidden-size", "8", "--batch-size", "30", "--eval-every", "5", "--warmup-steps", "0",
               "--dropout", "0", "--device", "cpu", "--threads", "1"]  # fmt: skip
    command = [sys.executable, "-m", "textrnn", "forecast", "train", *options, "--out", str(out), *extra]
    if processes > 1:
        command[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "textrnn"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_forecasting_with_two_processes_follows_one_with_the_same_global_batch(tmp_path):
    from test_forecast import sine_csv

    series = sine_csv(tmp_path / "load.csv", hours=24 * 12, noise=1.0)
    one, two = tmp_path / "one", tmp_path / "two"
    # 20 steps over epochs of 213 windows in batches of 30: short last batches split unevenly (2 and 1 rows).
    assert forecast(series, one, 1, "--max-steps", "20").returncode == 0
    result = forecast(series, two, 2, "--max-steps", "20", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 20 and "test" in summary  # one process reported
    for single, double in zip(metrics(one), metrics(two), strict=True):
        assert single["step"] == double["step"] and single["windows"] == double["windows"]
        for key in ("train_loss", "val_smape"):
            assert double[key] == pytest.approx(single[key], rel=1e-4), (key, single, double)
    weights = [torch.load(run / "last.pt", weights_only=True)["model"] for run in (one, two)]
    assert all(torch.allclose(weights[0][name], weights[1][name], atol=1e-5) for name in weights[0])


def test_two_processes_follow_one_on_a_corpus_of_several_documents(tmp_path):
    """The documents' starts split a batch into pieces (several forward calls before one backward): DDP agrees."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.txt").write_text(TINY_TEXT[index * 7 :] * 4, encoding="utf-8")
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(folder, one, 1, "--max-steps", "8").returncode == 0
    result = train(folder, two, 2, "--max-steps", "8")
    assert result.returncode == 0, result.stderr
    for single, double in zip(metrics(one), metrics(two), strict=True):
        assert double["val_perplexity"] == pytest.approx(single["val_perplexity"], rel=1e-4)
