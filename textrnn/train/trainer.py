"""The one trainer: every training run, language model or forecaster, goes through ``fit``.

A task (``lm.task.LanguageModelTask``, ``forecast.task.ForecastTask``; the interface is
``train.task.Task``) says what is trained: the model, its batches (a pure function of the
epoch and the batch index, so a run resumes at an exact position), the loss of one batch
(carrying recurrent state where the task has it) and a validation metric, lower is better.
The trainer owns everything else: limits and schedule, optimizer and clipping, non-finite
steps, the evaluation cadence, best and last checkpoints (through ``checkpoint``), early
stopping, stop requests (Ctrl-C, SIGTERM), the run lock and data parallelism under torchrun.

``fit`` reads as the run goes: set up (``Run``: model, optimizer, step, averages, counters), restore a
resumed run, train batch after batch (``Run.train_step``) with a validation and checkpoint every
``eval_every`` steps (``Run.evaluate``: keep the best weights, write the last with the whole trainer
state), stop at the first limit, on early stopping or on request (``Run.should_stop``), then evaluate once
more and hand the result to the task.

Nothing here prints: progress goes through ``callback(event, info)`` with events
``start``, ``step``, ``log``, ``note``, ``eval`` and ``end``, which the CLI turns into a progress bar
and lines. There is no host synchronisation inside a training step: losses are summed on
the device and read every ``LOG_EVERY`` steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from textrnn import checkpoint
from textrnn.errors import TextrnnError
from textrnn.nn import detach_state, map_state
from textrnn.train.averaging import WeightAverage
from textrnn.train.distributed import World
from textrnn.train.schedule import learning_rate, progress
from textrnn.train.state import kept_checkpoint, read_resume_state, rng_state, set_rng_state
from textrnn.train.step import Step, build_optimizer, check_precision, graph_obstacle, matmul_precision
from textrnn.train.task import Task

LOG_EVERY = 50  # steps between reads of the running loss (one host sync each)
AGREE_EVERY = 10  # with several processes: steps between agreements on stopping (one collective each)


def fit(
    task: Task,
    config,
    out_dir: str | Path,
    *,
    world: World,
    device: torch.device,
    resume: bool = False,
    run_config: dict | None = None,
    tokenizer=None,
    callback=None,
    should_stop=None,
) -> dict:
    """Train ``task`` under ``config`` (a ``TrainConfig`` or ``ForecastConfig``: optimizer, limits, schedule,
    clipping, evaluation interval, patience, seed) into ``out_dir`` and return ``task.summary`` of the result.

    A new run writes ``run_config`` (and ``tokenizer``) into ``out_dir`` first; ``resume=True`` continues
    from ``out_dir/last.pt``. ``should_stop()`` is polled after every step: when it says so, a checkpoint
    is written and the result comes back with ``interrupted: True``.
    """
    run = Run(task, config, Path(out_dir), world, device, callback, should_stop)
    if resume:
        run.restore()
    elif world.main:
        checkpoint.start_run(run.out_dir, run_config, tokenizer)
    run.report_start(resume)
    lock = checkpoint.locked(run.out_dir) if world.main else contextlib.nullcontext()  # one trainer per run
    with lock, matmul_precision(getattr(config, "precision", "fp32")):
        run.model.train()
        while not run.done:
            run.train_epoch()
        if run.window_steps or not run.last["val"]:  # what was trained since the last validation
            run.evaluate(save=run.counters["step"] > run.first_step or not (run.out_dir / "best.pt").exists())
    summary = task.summary(run.result(), run.model, world.main)
    run.report("end", summary)
    run.close()
    return summary


class Run:
    """One training run in progress: the model and what trains it (optimizer, step, weight average), the
    counters that a checkpoint stores (step, epoch, batch, elapsed time, best validation, ...), the carried
    state and the running loss sums (device tensors, read every ``LOG_EVERY`` steps)."""

    def __init__(self, task: Task, config, out_dir: Path, world: World, device, callback, should_stop):
        self.task, self.config, self.out_dir, self.world, self.device = task, config, out_dir, world, device
        self.report = callback if callback is not None and world.main else (lambda event, info: None)
        self.should_stop = should_stop
        torch.manual_seed(config.seed)
        self.model = task.build_model().to(device)
        check_precision(getattr(config, "precision", "fp32"), device, self.model)
        if world.active:  # the same initial weights everywhere, then each process its own dropout masks
            torch.manual_seed((config.seed + world.rank) % 2**63)
        obstacle = graph_obstacle(config, device, world.active)
        if obstacle is None and getattr(task, "graph_obstacle", None):  # the task's batches cannot be graphed
            obstacle = task.graph_obstacle
        self.optimizer = build_optimizer(self.model, config, capturable=obstacle is None)
        # With several processes, DDP averages the gradients of their rows: the gradient of the global batch.
        stepper = torch.nn.parallel.DistributedDataParallel(self.model) if world.active else self.model
        self.step_function = Step(
            self.loss_of, task.carries_state, self.model, stepper, self.optimizer, config, device, obstacle
        )
        self.average_mode = getattr(config, "average", "none")
        self.average = WeightAverage(self.model, "ema", config.average_decay) if self.average_mode == "ema" else None
        self.counters = {
            "step": 0,
            "epoch": 0,
            "batch": 0,
            task.unit: 0,
            "elapsed": 0.0,
            "train_time": 0.0,
            "best_val": math.inf,
            "evals_without_gain": 0,
            "skipped_steps": 0,
            "world_size": world.size,
        }
        self.state = None  # the recurrent state carried from batch to batch
        self.global_rows = task.batch_size
        self.metric = f"val_{task.metric}"
        self.check_steps = config.max_bad_steps > 0 and device.type == "cpu"
        zero = torch.zeros((), device=device)
        self.zero = zero
        self.loss_sum, self.loss_steps, self.window_sum, self.window_steps = zero.clone(), 0, zero.clone(), 0
        self.norm, self.lr, self.bad_in_a_row = zero.clone(), config.lr, 0
        self.last = {"train": {}, "val": {}}
        self.interrupted = self.stopped_early = False
        self.start_clock(0.0, 0.0)

    # ------------------------------------------------------------------ set-up

    def start_clock(self, elapsed: float, train_time: float) -> None:
        self.segment_start = time.perf_counter()
        self.elapsed_at_start, self.train_time_at_start, self.eval_time = elapsed, train_time, 0.0
        self.shared_elapsed = elapsed  # with several processes: the slowest clock, agreed every AGREE_EVERY steps
        self.first_step = self.counters["step"]
        self.done = self.finished(elapsed)

    def restore(self) -> None:
        """Continue from ``last.pt``: weights, optimizer, counters, random generators, scaler, average and the
        carried state rows of this process (nothing to restore when the run stopped before its first one)."""
        saved = read_resume_state(self.out_dir, self.world)
        if saved is not None:
            trainer = saved["trainer"]
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(trainer["optimizer"])
            self.counters.update(trainer["counters"])
            rng = trainer["rng"]
            set_rng_state(rng[self.world.rank] if isinstance(rng, list) else rng)  # a list: one per process
            if self.step_function.scaler is not None and "scaler" in trainer:
                self.step_function.scaler.load_state_dict(trainer["scaler"])
            if "average" in trainer:
                self.average = WeightAverage(self.model, self.average_mode, getattr(self.config, "average_decay", 0.0))
                self.average.load_state_dict(trainer["average"])
            if self.task.carries_state:
                rows = self.world.rows(self.task.batch_size, strict=True)
                self.state = map_state(lambda tensor: tensor[:, rows].to(self.device), trainer.get("hidden"))
        self.start_clock(self.counters["elapsed"], self.counters["train_time"])

    def report_start(self, resume: bool) -> None:
        self.parameters = sum(p.numel() for p in self.model.parameters())
        info = {
            "run_dir": str(self.out_dir),
            "device": str(self.device),
            "parameters": self.parameters,
            "skipped_steps": self.counters["skipped_steps"],
            "batches_per_epoch": self.task.per_epoch,
            "resumed_at": self.counters["step"] if resume else None,
            "metric": self.task.metric,
            "unit": self.task.unit,
        }
        self.report("start", {**info, **self.task.start_info()})

    # ------------------------------------------------------------------ clocks and limits

    def elapsed(self) -> float:
        return self.elapsed_at_start + time.perf_counter() - self.segment_start

    def train_time(self) -> float:
        return self.train_time_at_start + (time.perf_counter() - self.segment_start) - self.eval_time

    def progress(self, elapsed: float) -> float:
        return progress(self.config, self.task.per_epoch, self.counters["step"], elapsed)

    def finished(self, elapsed: float) -> bool:
        return self.stopped_early or self.progress(elapsed) >= 1.0

    def agreed_stop(self) -> bool:
        """Whether to stop now, the same in every process. With several processes they compare notes every
        AGREE_EVERY steps only (a collective is a host sync): a stop request and the slowest clock count from
        there, while step and epoch limits and early stopping, the same everywhere, are exact."""
        stop = self.should_stop is not None and self.should_stop()
        if not self.world.active:
            self.interrupted = stop
            return stop or self.finished(self.elapsed())
        if self.counters["step"] % AGREE_EVERY == 0:
            self.interrupted, self.shared_elapsed = self.world.agree(stop, self.elapsed())
        return self.interrupted or self.finished(self.shared_elapsed)

    # ------------------------------------------------------------------ training

    def loss_of(self, model, batch, state):
        """The task's loss of this process's rows, weighted so that DDP's average is the global batch's mean."""
        rows = batch[0].shape[0]
        if rows == 0:  # a short last batch left this process no rows: it adds nothing, but takes part
            return sum(p.sum() for p in model.parameters()) * 0.0, state
        loss, state = self.task.loss(model, batch, state)
        if self.world.active and not self.task.even_rows:  # DDP averages the processes: weigh each by its rows
            loss = loss * (rows * self.world.size / self.global_rows)
        return loss, state

    def train_epoch(self) -> None:
        """The batches of the current epoch from the current batch on, until the run is done; an epoch that
        runs to its end starts the next one with a fresh state."""
        for batch in self.task.batches(self.counters["epoch"], self.counters["batch"]):
            self.train_step(batch)
            self.done = self.agreed_stop()
            if self.done:
                return
        self.counters["epoch"] += 1
        self.counters["batch"] = 0
        self.state = None

    def train_step(self, batch) -> None:
        """One optimizer step on this process's rows of ``batch``; a validation every ``eval_every`` steps."""
        self.global_rows = batch[0].shape[0]
        rows = self.world.rows(self.global_rows, strict=self.task.even_rows)
        now = self.shared_elapsed if self.world.active else self.elapsed()
        self.lr = learning_rate(self.config, self.counters["step"], self.progress(now))
        carried = detach_state(self.state) if self.task.carries_state else None
        loss, self.state, self.norm, applied = self.step_function(
            tuple(tensor[rows] for tensor in batch), carried, self.lr, skip_nonfinite=self.check_steps
        )
        while self.step_function.notes:  # why the steps are not graphed, once
            self.report("note", {"message": self.step_function.notes.pop(0)})
        self.counters["batch"] += 1
        if not applied:  # a non-finite loss or gradient (checked on the CPU, where the read is free)
            self.skip_step()
            return
        self.bad_in_a_row = 0
        if self.average is not None:
            self.average.update(self.model)
        self.loss_sum += loss.detach()
        self.window_sum += loss.detach()
        self.loss_steps += 1
        self.window_steps += 1
        self.counters["step"] += 1
        self.counters[self.task.unit] += batch[0].numel()
        step = self.counters["step"]
        self.report("step", {"step": step, "progress": self.progress(self.elapsed())})
        if step % LOG_EVERY == 0:
            self.report_log()
        if step % self.config.eval_every == 0:
            self.evaluate()

    def skip_step(self) -> None:
        self.counters["skipped_steps"] += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.config.max_bad_steps:
            raise TextrnnError(
                f"training stopped: {self.bad_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(at step {self.counters['step']}): lower --lr or check the data; {kept_checkpoint(self.out_dir)}"
            )

    def rate(self, train_time: float) -> float:
        return self.counters[self.task.unit] / max(train_time, 1e-9)

    def report_log(self) -> None:
        """The running training loss since the last log line (one host read), the rate and the gradient norm."""
        figures = self.task.train_figures(float(self.world.mean(self.loss_sum)) / self.loss_steps)
        info = {"step": self.counters["step"], "lr": self.lr, "grad_norm": float(self.norm)}
        self.report("log", {**info, f"{self.task.unit}_per_sec": self.rate(self.train_time()), **figures})
        self.loss_sum, self.loss_steps = self.zero.clone(), 0

    # ------------------------------------------------------------------ validation and checkpoints

    def evaluate(self, save: bool = True) -> None:
        """Validate (the trained weights and the averaged ones), keep the better as ``best.pt`` when it beats
        the best so far, count validations without a gain (early stopping, the ASGD trigger), write ``last.pt``
        with the whole trainer state and a ``metrics.jsonl`` line. ``save=False``: figures only."""
        started = time.perf_counter()
        self.counters["elapsed"] = self.elapsed()
        self.counters["train_time"] = self.train_time()
        val, score, from_average = self.validate()
        improved = save and score < self.counters["best_val"]
        if improved:
            self.keep_best(score, from_average)
        elif save:
            self.no_gain()
        record = {
            "step": self.counters["step"],
            "epoch": self.counters["epoch"],
            self.task.unit: self.counters[self.task.unit],
            "elapsed_sec": round(self.counters["elapsed"], 3),
            "lr": self.lr,
            **self.last["train"],
            **val,
            f"best_{self.metric}": self.counters["best_val"],
            f"{self.task.unit}_per_sec": self.rate(self.counters["train_time"]),
        }
        if save:
            self.save_last(record)
        self.eval_time += time.perf_counter() - started
        self.report("eval", dict(record, improved=improved, stopped_early=self.stopped_early))

    def validate(self) -> tuple[dict, float, bool]:
        """``(figures, best score, whether the averaged weights gave it)``; the training loss since the last
        validation is read here. Non-finite weights or figures stop the run with a clear error."""
        val = self.task.validate(self.model)
        if self.window_steps:
            self.last["train"] = self.task.train_figures(float(self.world.mean(self.window_sum)) / self.window_steps)
        self.window_sum, self.window_steps = self.zero.clone(), 0
        self.last["val"] = val
        kept = kept_checkpoint(self.out_dir)
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            step = self.counters["step"]
            raise TextrnnError(f"training diverged at step {step} (the weights are not finite): lower --lr; {kept}")
        if not math.isfinite(val[self.metric]):
            raise TextrnnError(f"{self.task.invalid_validation(self.counters['step'])}; {kept}")
        candidates = [(val[self.metric], False)]
        if self.average is not None and self.average.count:
            with self.average.swapped_into(self.model):
                averaged = self.task.validate(self.model)
            val = {**val, **{f"avg_{key}": value for key, value in averaged.items()}}
            candidates.append((averaged[self.metric], True))
        score, from_average = min(candidates, key=lambda candidate: candidate[0])
        return val, score, from_average

    def keep_best(self, score: float, from_average: bool) -> None:
        self.counters["best_val"] = score
        self.counters["evals_without_gain"] = 0
        if self.world.main:
            with self.average.swapped_into(self.model) if from_average else contextlib.nullcontext():
                payload = {"model": self.model.state_dict(), "step": self.counters["step"], self.metric: score}
            checkpoint.write_tensors(self.out_dir / "best.pt", {**payload, "averaged": from_average})

    def no_gain(self) -> None:
        """A validation without a better score: early stopping after ``patience`` of them; with ``--average
        asgd``, the averaging starts after ``average_after`` of them."""
        self.counters["evals_without_gain"] += 1
        patience = getattr(self.config, "patience", 0)
        self.stopped_early = bool(patience) and self.counters["evals_without_gain"] >= patience
        if self.average_mode == "asgd" and self.average is None:
            if self.counters["evals_without_gain"] >= self.config.average_after:
                self.average = WeightAverage(self.model, "asgd", 0.0)  # from here on, the iterates are averaged

    def save_last(self, record: dict) -> None:
        """``last.pt`` with everything an exact resume needs, and the record in ``metrics.jsonl``. Every process
        takes part in the gathers (its state rows, its random generators); the first one writes."""
        every_row = self.world.gather_rows(self.state)
        every_rng = self.world.gather_objects(rng_state())
        if not self.world.main:
            return
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "counters": dict(self.counters),
            "rng": every_rng,
            "hidden": map_state(lambda tensor: tensor.detach().cpu(), every_row),
        }
        if self.step_function.scaler is not None:
            trainer_state["scaler"] = self.step_function.scaler.state_dict()
        if self.average is not None:
            trainer_state["average"] = self.average.state_dict()
        checkpoint.write_tensors(self.out_dir / "last.pt", {"model": self.model.state_dict(), "trainer": trainer_state})
        checkpoint.append_metrics(self.out_dir, record)

    # ------------------------------------------------------------------ the end

    def result(self) -> dict:
        counters, unit = self.counters, self.task.unit
        return {
            "steps": counters["step"],
            "epochs": counters["epoch"] + counters["batch"] / max(self.task.per_epoch, 1),
            unit: counters[unit],
            f"{unit}_per_sec": self.rate(counters["train_time"]),
            "train_seconds": counters["train_time"],
            "best_val": counters["best_val"],
            "last_train": self.last["train"],
            "last_val": self.last["val"],
            "interrupted": self.interrupted,
            "stopped_early": self.stopped_early,
            "skipped_steps": counters["skipped_steps"],
            "parameters": self.parameters,
            "checkpoint": str(self.out_dir),
            "elapsed_sec": self.elapsed(),
        }

    def close(self) -> None:
        self.step_function = None  # DDP holds the process group: let it go before the group is destroyed
        self.world.close()
