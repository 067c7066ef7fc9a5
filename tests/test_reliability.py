"""Training never loses work; checkpoints are safe to load; a second trainer is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from textrnn import checkpoint, load_checkpoint
from textrnn.config import ModelConfig, TrainConfig
from textrnn.errors import TextrnnError
from textrnn.lm.task import train

from conftest import TINY_CLI, TINY_MODEL, TINY_TEXT, TINY_TRAIN

LONG_RUN = [
    *TINY_CLI,
    "--eval-every",
    "25",
    "--seed",
    "3",
]


def textrnn(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "textrnn", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for_checkpoint(run, process, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and (run / "last.pt").exists():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT * 5, encoding="utf-8")
    return path


def test_kill_9_then_resume_ends_exactly_like_an_uninterrupted_run(corpus, tmp_path):
    steps = 400
    straight = subprocess.run(
        [
            sys.executable,
            "-m",
            "textrnn",
            "train",
            "--corpus",
            str(corpus),
            *LONG_RUN,
            "--max-steps",
            str(steps),
            "--out",
            str(tmp_path / "straight"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr

    killed = tmp_path / "killed"
    process = textrnn("train", "--corpus", corpus, *LONG_RUN, "--max-steps", steps, "--out", killed)
    wait_for_checkpoint(killed, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    killed_at = json.loads((killed / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert killed_at < steps  # it really was interrupted
    load_checkpoint(killed, weights="last")  # what the kill left is loadable

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "textrnn",
            "train",
            "--resume",
            "--out",
            str(killed),
            "--max-steps",
            str(steps),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == steps
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(killed / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    final = lambda run: json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert final(killed)["val_perplexity"] == final(tmp_path / "straight")["val_perplexity"]


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(corpus, tmp_path):
    run = tmp_path / "run"
    process = textrnn("train", "--corpus", corpus, *LONG_RUN, "--max-steps", 10**6, "--out", run)
    wait_for_checkpoint(run, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"textrnn train --out {run} --resume" in stderr
    state = torch.load(run / "last.pt", weights_only=True)
    last_record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert state["trainer"]["counters"]["step"] == last_record["step"] >= 20  # saved where it stopped
    assert not (run / checkpoint.LOCK).exists()


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_is_taken_over(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    model, config = ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN)
    train(model, config, run)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / checkpoint.LOCK).write_text(f"{sleeper.pid}\n")
        with pytest.raises(TextrnnError, match=f"in use by another textrnn process \\(pid {sleeper.pid}\\)"):
            train(model, config, run, resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The owner is gone now: its lock is stale and the resume goes ahead.
    summary = train(model, TrainConfig(corpus=str(tiny_corpus), **{**TINY_TRAIN, "max_steps": 9}), run, resume=True)
    assert summary["steps"] == 9
    assert not (run / checkpoint.LOCK).exists()


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_when_in_a_row(tiny_corpus, tmp_path, monkeypatch):
    import textrnn.lm.task as trainer

    real = trainer.F.cross_entropy
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) in (2, 3) else loss

    monkeypatch.setattr(trainer.F, "cross_entropy", sometimes_nan)
    model = ModelConfig(**TINY_MODEL)
    summary = train(model, TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN), tmp_path / "skips")
    assert summary["skipped_steps"] == 2 and summary["steps"] == 6
    assert all(
        bool(torch.isfinite(t).all()) for t in load_checkpoint(tmp_path / "skips", weights="last").state_dict().values()
    )

    def nan_after_20(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * (float("nan") if len(calls) > 20 else 1.0)

    monkeypatch.setattr(trainer.F, "cross_entropy", nan_after_20)
    calls.clear()
    config = TrainConfig(corpus=str(tiny_corpus), **{**TINY_TRAIN, "max_steps": 100, "max_bad_steps": 3})
    with pytest.raises(TextrnnError, match="3 steps in a row had a non-finite loss"):
        train(model, config, tmp_path / "stops")
    weights = torch.load(tmp_path / "stops" / "last.pt", weights_only=True)["model"]
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_an_unwritable_output_is_an_error_before_training_and_a_failed_write_keeps_the_last_checkpoint(
    tiny_corpus, tmp_path, monkeypatch
):
    model, config = ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TextrnnError, match="cannot write the run directory"):
        train(model, config, blocker / "run")

    run = tmp_path / "run"
    real_save = torch.save
    writes = []

    def disk_full_after_two(payload, handle, *args, **kwargs):
        writes.append(1)
        if len(writes) > 2:  # best.pt and last.pt at step 3 succeed, then the disk is full
            raise OSError(28, "No space left on device")
        return real_save(payload, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_after_two)
    with pytest.raises(TextrnnError, match="No space left on device.*previous checkpoint there is intact"):
        train(model, config, run)
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["trainer"]["counters"]["step"] == 3
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_bf16_weights_load_on_the_cpu(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **TINY_TRAIN), run)
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["model"] = {name: tensor.to(torch.bfloat16) for name, tensor in payload["model"].items()}
    checkpoint.write_tensors(run / "best.pt", payload)
    model = load_checkpoint(run)
    assert next(model.parameters()).dtype == torch.float32
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))[0]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_a_gpu_trained_run_loads_on_the_cpu(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    train(ModelConfig(**TINY_MODEL), TrainConfig(corpus=str(tiny_corpus), **{**TINY_TRAIN, "device": "cuda"}), run)
    model = load_checkpoint(run, device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_the_lock_names_a_live_owner_only(tmp_path):
    with checkpoint.locked(tmp_path):
        assert (tmp_path / checkpoint.LOCK).read_text().strip() == str(os.getpid())
    assert not (tmp_path / checkpoint.LOCK).exists()
