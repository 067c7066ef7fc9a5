"""The one trainer: every training run, language model or forecaster, goes through ``fit``.

A task (``lm.task.LanguageModelTask``, ``forecast.task.ForecastTask``; the interface is
``train.task.Task``) says what is trained: the model, its batches (a pure function of the
epoch and the batch index, so a run resumes at an exact position), the loss of one batch
(carrying recurrent state where the task has it) and a validation metric, lower is better.
The trainer owns everything else: limits and schedule, optimizer and clipping, non-finite
steps, the evaluation cadence, best and last checkpoints (through ``checkpoint``), early
stopping, stop requests (Ctrl-C, SIGTERM), the run lock and data parallelism under torchrun.

Nothing here prints: progress goes through ``callback(event, info)`` with events
``start``, ``step``, ``log``, ``eval`` and ``end``, which the CLI turns into a progress bar
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
    report = callback if callback is not None and world.main else (lambda event, info: None)
    out_dir = Path(out_dir)
    saved = read_resume_state(out_dir, world) if resume else None
    torch.manual_seed(config.seed)
    model = task.build_model().to(device)
    check_precision(getattr(config, "precision", "fp32"), device, model)
    if world.active:  # the same initial weights everywhere, then each process its own dropout masks
        torch.manual_seed((config.seed + world.rank) % 2**63)
    obstacle = graph_obstacle(config, device, world.active)
    optimizer = build_optimizer(model, config, capturable=obstacle is None)
    # With several processes, DDP averages the gradients of their rows: the gradient of the global batch.
    stepper = torch.nn.parallel.DistributedDataParallel(model) if world.active else model
    global_rows = task.batch_size

    def loss_of(model, batch, state):
        rows = batch[0].shape[0]
        if rows == 0:  # a short last batch left this process no rows: it adds nothing, but takes part
            return sum(p.sum() for p in model.parameters()) * 0.0, state
        loss, state = task.loss(model, batch, state)
        if world.active and not task.even_rows:  # DDP averages the processes: weigh each by its rows
            loss = loss * (rows * world.size / global_rows)
        return loss, state

    step_function = Step(loss_of, task.carries_state, model, stepper, optimizer, config, device, obstacle)
    average_mode = getattr(config, "average", "none")
    average = WeightAverage(model, average_mode, config.average_decay) if average_mode == "ema" else None
    counters = {
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
    state = None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["trainer"]["optimizer"])
        counters.update(saved["trainer"]["counters"])
        rng = saved["trainer"]["rng"]
        set_rng_state(rng[world.rank] if isinstance(rng, list) else rng)  # a list: one per process
        if step_function.scaler is not None and "scaler" in saved["trainer"]:
            step_function.scaler.load_state_dict(saved["trainer"]["scaler"])
        if "average" in saved["trainer"]:
            average = WeightAverage(model, average_mode, getattr(config, "average_decay", 0.0))
            average.load_state_dict(saved["trainer"]["average"])
        if task.carries_state:
            rows = world.rows(task.batch_size, strict=True)
            state = map_state(lambda tensor: tensor[:, rows].to(device), saved["trainer"].get("hidden"))
    elif not resume and world.main:
        checkpoint.start_run(out_dir, run_config, tokenizer)

    parameters = sum(p.numel() for p in model.parameters())
    report(
        "start",
        {
            "run_dir": str(out_dir),
            "device": str(device),
            "parameters": parameters,
            "skipped_steps": counters["skipped_steps"],
            "batches_per_epoch": task.per_epoch,
            "resumed_at": counters["step"] if resume else None,
            **task.start_info(),
        },
    )

    metric = f"val_{task.metric}"
    first_step = counters["step"]
    check_steps = config.max_bad_steps > 0 and device.type == "cpu"
    patience = getattr(config, "patience", 0)
    zero = torch.zeros((), device=device)
    loss_sum, loss_steps, window_sum, window_steps = zero.clone(), 0, zero.clone(), 0  # window: since the last eval
    norm, lr = zero.clone(), config.lr
    bad_in_a_row = 0
    last = {"train": {}, "val": {}}
    flags = {"interrupted": False, "stopped_early": False}
    segment_start = time.perf_counter()
    elapsed_at_start, train_time_at_start, eval_time = counters["elapsed"], counters["train_time"], 0.0

    def elapsed() -> float:
        return elapsed_at_start + time.perf_counter() - segment_start

    def train_time() -> float:
        return train_time_at_start + (time.perf_counter() - segment_start) - eval_time

    def evaluate_and_save(save: bool = True) -> None:
        nonlocal window_sum, window_steps, eval_time, average
        started = time.perf_counter()
        counters["elapsed"] = elapsed()
        counters["train_time"] = train_time()
        val = task.validate(model)
        if window_steps:
            last["train"] = task.train_figures(float(world.mean(window_sum)) / window_steps)
        window_sum, window_steps = zero.clone(), 0
        last["val"] = val
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise TextrnnError(
                f"training diverged at step {counters['step']} (the weights are not finite): lower --lr; "
                f"{kept_checkpoint(out_dir)}"
            )
        if not math.isfinite(val[metric]):
            raise TextrnnError(f"{task.invalid_validation(counters['step'])}; {kept_checkpoint(out_dir)}")
        candidates = [(val[metric], False)]
        if average is not None and average.count:
            with average.swapped_into(model):
                averaged = task.validate(model)
            val = {**val, **{f"avg_{key}": value for key, value in averaged.items()}}
            candidates.append((averaged[metric], True))
        score, from_average = min(candidates, key=lambda candidate: candidate[0])
        improved = save and score < counters["best_val"]
        if improved:
            counters["best_val"] = score
            counters["evals_without_gain"] = 0
            if world.main:
                with average.swapped_into(model) if from_average else contextlib.nullcontext():
                    payload = {"model": model.state_dict(), "step": counters["step"], metric: score}
                checkpoint.write_tensors(out_dir / "best.pt", {**payload, "averaged": from_average})
        elif save:
            counters["evals_without_gain"] += 1
            flags["stopped_early"] = bool(patience) and counters["evals_without_gain"] >= patience
            if average_mode == "asgd" and average is None and counters["evals_without_gain"] >= config.average_after:
                average = WeightAverage(model, "asgd", 0.0)  # the trigger: from here on, the iterates are averaged
        record = {
            "step": counters["step"],
            "epoch": counters["epoch"],
            task.unit: counters[task.unit],
            "elapsed_sec": round(counters["elapsed"], 3),
            "lr": lr,
            **last["train"],
            **val,
            f"best_{metric}": counters["best_val"],
            f"{task.unit}_per_sec": counters[task.unit] / max(counters["train_time"], 1e-9),
        }
        every_row = world.gather_rows(state) if save else None  # every process takes part in the gathers
        every_rng = world.gather_objects(rng_state()) if save else None
        if save and world.main:  # not when a finished run is resumed with nothing left to do
            trainer_state = {
                "optimizer": optimizer.state_dict(),
                "counters": dict(counters),
                "rng": every_rng,
                "hidden": map_state(lambda tensor: tensor.detach().cpu(), every_row),
            }
            if step_function.scaler is not None:
                trainer_state["scaler"] = step_function.scaler.state_dict()
            if average is not None:
                trainer_state["average"] = average.state_dict()
            checkpoint.write_tensors(out_dir / "last.pt", {"model": model.state_dict(), "trainer": trainer_state})
            checkpoint.append_metrics(out_dir, record)
        eval_time += time.perf_counter() - started
        report("eval", dict(record, improved=improved, stopped_early=flags["stopped_early"]))

    shared_elapsed = elapsed_at_start  # with several processes: the slowest clock, agreed every AGREE_EVERY steps

    def finished(now: float) -> bool:
        return flags["stopped_early"] or progress(config, task.per_epoch, counters["step"], now) >= 1.0

    def agreed_stop() -> bool:
        """Whether to stop now, the same in every process. With several processes they compare notes every
        AGREE_EVERY steps only (a collective is a host sync): a stop request and the slowest clock count from
        there, while step and epoch limits and early stopping, the same everywhere, are exact."""
        nonlocal shared_elapsed
        stop = should_stop is not None and should_stop()
        if not world.active:
            flags["interrupted"] = stop
            return stop or finished(elapsed())
        if counters["step"] % AGREE_EVERY == 0:
            flags["interrupted"], shared_elapsed = world.agree(stop, elapsed())
        return flags["interrupted"] or finished(shared_elapsed)

    done = finished(elapsed())
    lock = checkpoint.locked(out_dir) if world.main else contextlib.nullcontext()  # one trainer per run directory
    with lock, matmul_precision(getattr(config, "precision", "fp32")):
        model.train()
        while not done:
            for batch in task.batches(counters["epoch"], counters["batch"]):
                global_rows = batch[0].shape[0]
                rows = world.rows(global_rows, strict=task.even_rows)
                now = shared_elapsed if world.active else elapsed()
                lr = learning_rate(config, counters["step"], progress(config, task.per_epoch, counters["step"], now))
                carried = detach_state(state) if task.carries_state else None
                loss, state, norm, applied = step_function(
                    tuple(tensor[rows] for tensor in batch), carried, lr, skip_nonfinite=check_steps
                )
                while step_function.notes:  # why the steps are not graphed, once
                    report("note", {"message": step_function.notes.pop(0)})
                counters["batch"] += 1
                if not applied:  # a non-finite loss or gradient (checked on the CPU, where the read is free)
                    counters["skipped_steps"] += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= config.max_bad_steps:
                        raise TextrnnError(
                            f"training stopped: {bad_in_a_row} steps in a row had a non-finite loss or gradient "
                            f"(at step {counters['step']}): lower --lr or check the data; {kept_checkpoint(out_dir)}"
                        )
                    done = agreed_stop()
                    if done:
                        break
                    continue
                bad_in_a_row = 0
                if average is not None:
                    average.update(model)
                loss_sum += loss.detach()
                window_sum += loss.detach()
                loss_steps += 1
                window_steps += 1
                counters["step"] += 1
                counters[task.unit] += batch[0].numel()
                step = counters["step"]
                report("step", {"step": step, "progress": progress(config, task.per_epoch, step, elapsed())})
                if step % LOG_EVERY == 0:
                    report(
                        "log",
                        {
                            "step": step,
                            "lr": lr,
                            "grad_norm": float(norm),
                            f"{task.unit}_per_sec": counters[task.unit] / max(train_time(), 1e-9),
                            **task.train_figures(float(world.mean(loss_sum)) / loss_steps),
                        },
                    )
                    loss_sum, loss_steps = zero.clone(), 0
                if step % config.eval_every == 0:
                    evaluate_and_save()
                done = agreed_stop()
                if done:
                    break
            else:  # the epoch ran to its end: the next one starts with a fresh state
                counters["epoch"] += 1
                counters["batch"] = 0
                state = None

        if window_steps or not last["val"]:
            evaluate_and_save(save=counters["step"] > first_step or not (out_dir / "best.pt").exists())
    result = {
        "steps": counters["step"],
        "epochs": counters["epoch"] + counters["batch"] / max(task.per_epoch, 1),
        task.unit: counters[task.unit],
        f"{task.unit}_per_sec": counters[task.unit] / max(counters["train_time"], 1e-9),
        "train_seconds": counters["train_time"],
        "best_val": counters["best_val"],
        "last_train": last["train"],
        "last_val": last["val"],
        "interrupted": flags["interrupted"],
        "stopped_early": flags["stopped_early"],
        "skipped_steps": counters["skipped_steps"],
        "parameters": parameters,
        "checkpoint": str(out_dir),
        "elapsed_sec": elapsed(),
    }
    summary = task.summary(result, model, world.main)
    report("end", summary)
    step_function = stepper = None  # DDP holds the process group: let it go before the group is destroyed
    world.close()
    return summary
