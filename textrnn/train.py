"""The trainer: truncated BPTT, clipping, schedule, periodic evaluation, checkpoints.

``train`` never prints. It reports through ``callback(event, info)`` with events
``start``, ``step``, ``log``, ``eval`` and ``end``; the CLI turns them into a
progress bar and lines. There is no host synchronisation inside a training step:
losses are summed on the device and read every ``LOG_EVERY`` steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from textrnn import checkpoint, corpus
from textrnn.batching import Batches
from textrnn.config import LIMITS, ModelConfig, TrainConfig
from textrnn.distributed import World
from textrnn.errors import TextrnnError
from textrnn.evaluate import cross_entropy_sum, metrics_from_sum
from textrnn.models import CharLM
from textrnn.nn import detach_state, map_state
from textrnn.tokenizer import load_tokenizer

LOG_EVERY = 50  # steps between reads of the running loss (one host sync each)
AGREE_EVERY = 10  # with several processes: steps between agreements on stopping (one collective each)


def _exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


def _kept(out_dir: Path) -> str:
    if (out_dir / "last.pt").exists():
        return f"the last good checkpoint in {out_dir} was kept"
    return "no checkpoint had been written yet"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TextrnnError("--device cuda was asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise TextrnnError("--device mps was asked for, but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on matrices only: biases and embeddings are left alone.
    decay = [p for name, p in model.named_parameters() if p.dim() >= 2 and not name.startswith("embedding")]
    rest = [p for name, p in model.named_parameters() if not (p.dim() >= 2 and not name.startswith("embedding"))]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay over the run's progress."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "constant":
        return config.lr * warmup
    return config.lr * warmup * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _Progress:
    """How far the run is towards whichever limit comes first (0..1)."""

    def __init__(self, config: TrainConfig, per_epoch: int):
        self.config = config
        self.per_epoch = per_epoch

    def __call__(self, step: int, elapsed: float) -> float:
        fractions = []
        if self.config.max_steps:
            fractions.append(step / self.config.max_steps)
        if self.config.max_seconds:
            fractions.append(elapsed / self.config.max_seconds)
        if self.config.epochs:
            fractions.append(step / (self.config.epochs * self.per_epoch))
        return max(fractions)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _join(train_config: TrainConfig) -> tuple[World, torch.device]:
    """This process's place among the training processes (one, without torchrun) and its device."""
    world = World()
    device = world.device(resolve_device(train_config.device))
    world.start(device)
    return world, device


def _check_world(saved: dict, world: World, out_dir: Path) -> None:
    saved_world = saved["trainer"]["counters"].get("world_size", 1)
    if saved_world != world.size:
        raise TextrnnError(
            f"{out_dir} was trained by {saved_world} process(es) and is resumed by {world.size}: the carried "
            f"state and the data order belong to the old layout; resume with {saved_world} process(es)"
        )


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data_dir: Path | None = None,
    callback=None,
    should_stop=None,
) -> dict:
    """Train a character language model and return the summary (the ``--json`` keys of ``train``).

    ``resume=True`` continues the run in ``out_dir`` from its last checkpoint (the configs
    given are then those stored in the run, with the limits, ``eval_every`` and ``device`` of ``train_config``;
    ``config.with_limits`` builds one from the stored config).
    ``should_stop()`` is polled after every step: when it says so, a checkpoint is written
    and the summary comes back with ``interrupted: True``.
    """
    report = callback or (lambda event, info: None)
    out_dir = Path(out_dir)
    saved = None
    if resume:
        stored = checkpoint.read_config(out_dir)
        stored_train = checkpoint.train_config_of(stored)
        limits = {name: getattr(train_config, name) for name in LIMITS}
        train_config = dataclasses.replace(
            stored_train, eval_every=train_config.eval_every, device=train_config.device, **limits
        )
        if train_config.corpus not in corpus.BUILTIN:  # a relative path may point elsewhere from here
            train_config = dataclasses.replace(train_config, corpus=stored["data"]["path"])
        model_config = ModelConfig(**stored["model"])
        if (out_dir / "last.pt").exists():
            saved = checkpoint.read_tensors(out_dir / "last.pt")
            if "trainer" not in saved:
                raise TextrnnError(f"{out_dir / 'last.pt'} holds no trainer state: it cannot be resumed")
        # else: stopped before its first checkpoint, so it starts again from step 0
        tokenizer = load_tokenizer(out_dir / "tokenizer.json", stored["tokenizer"].get("type", "char"))
        world, device = _join(train_config)
        if saved is not None:
            _check_world(saved, world, out_dir)
        with world.main_first():  # a large corpus is prepared once, by the first process
            tokenizer, splits, data = corpus.load_splits(train_config, data_dir, tokenizer)
        if data["sha1"] != stored["data"]["sha1"]:
            raise TextrnnError(
                f"the corpus {data['path']} changed since the run began (sha1 differs): it cannot be resumed"
            )
    else:
        if model_config.task == "infill" and train_config.tokenizer != "char":
            raise TextrnnError("--task infill fills one character per blank: use --tokenizer char")
        world, device = _join(train_config)
        with world.main_first():
            tokenizer, splits, data = corpus.load_splits(train_config, data_dir)
        model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)

    if not world.main:  # one process speaks and writes: the others train in step with it
        report = lambda event, info: None  # noqa: E731
    if train_config.precision == "bf16" and device.type == "cuda" and model_config.backend == "fused":
        raise TextrnnError(
            "--precision bf16 on a GPU would run cuDNN's recurrent kernels in fp16 (autocast's rule for them), "
            "without loss scaling: use --backend scratch with bf16, or --precision fp32"
        )
    torch.manual_seed(train_config.seed)
    model = CharLM(model_config).to(device)
    if world.active:  # the same initial weights everywhere, then each process its own dropout masks
        torch.manual_seed((train_config.seed + world.rank) % 2**63)
    train_tokens = torch.from_numpy(splits["train"]).to(device)
    val_tokens = torch.from_numpy(splits["val"]).to(device)
    val_characters = tokenizer.count_characters(splits["val"][1:])  # bits per character, whatever the tokens
    batches = Batches(
        train_tokens, train_config.batch_size, train_config.num_steps, train_config.partition, train_config.seed
    )
    optimizer = build_optimizer(model, train_config)
    progress = _Progress(train_config, batches.per_epoch)
    # With several processes, DDP averages the gradients of their rows: the gradient of the global batch.
    stepper = torch.nn.parallel.DistributedDataParallel(model) if world.active else model

    counters = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "tokens": 0,
        "elapsed": 0.0,
        "train_time": 0.0,
        "best_val": math.inf,
        "skipped_steps": 0,
        "world_size": world.size,
    }
    bad_in_a_row = 0
    first_step = counters["step"]
    check_steps = train_config.max_bad_steps > 0 and device.type == "cpu"
    bf16 = train_config.precision == "bf16"
    if bf16 and device.type not in ("cpu", "cuda"):
        raise TextrnnError(f"--precision bf16 runs on CPUs and CUDA GPUs, not on {device.type}: use --precision fp32")
    hidden = None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["trainer"]["optimizer"])
        counters.update(saved["trainer"]["counters"])
        rng = saved["trainer"]["rng"]
        _set_rng_state(rng[world.rank] if isinstance(rng, list) else rng)  # a list: one per process
        hidden = map_state(
            lambda tensor: tensor[:, world.rows(train_config.batch_size)].to(device), saved["trainer"]["hidden"]
        )
    elif not resume and world.main:
        config = checkpoint.run_config(model_config, train_config, data["normalize"], data)
        checkpoint.start_run(out_dir, config, tokenizer)

    parameters = sum(p.numel() for p in model.parameters())
    report(
        "start",
        {
            "run_dir": str(out_dir),
            "device": str(device),
            "parameters": parameters,
            "skipped_steps": counters["skipped_steps"],
            "data": data,
            "batches_per_epoch": batches.per_epoch,
            "resumed_at": counters["step"] if resume else None,
        },
    )

    vocab = model_config.vocab_size
    infill = model_config.task == "infill"
    # The backward direction of an infill model cannot carry state from text it has not read.
    carry_state = batches.carries_state and not infill
    loss_sum = torch.zeros((), device=device)
    loss_steps = 0
    window_sum = torch.zeros((), device=device)  # since the last evaluation, for train_perplexity
    window_steps = 0
    last = {"train_perplexity": math.nan, "val_perplexity": math.nan, "val_bits_per_char": math.nan}
    interrupted = False
    clock = time.perf_counter()
    elapsed_at_start = counters["elapsed"]
    segment_start = clock
    train_time_at_start = counters["train_time"]
    eval_time = 0.0

    def elapsed() -> float:
        return elapsed_at_start + time.perf_counter() - segment_start

    def finished() -> bool:
        return progress(counters["step"], elapsed()) >= 1.0

    def evaluate_and_save(save: bool = True) -> None:
        nonlocal window_sum, window_steps, eval_time
        started = time.perf_counter()
        counters["elapsed"] = elapsed()
        counters["train_time"] = train_time_at_start + (started - segment_start) - eval_time
        total, count = cross_entropy_sum(model, val_tokens, train_config.num_steps)
        metrics = metrics_from_sum(float(total), count, val_characters)
        train_ppl = _exp(float(world.mean(window_sum)) / window_steps) if window_steps else last["train_perplexity"]
        window_sum, window_steps = torch.zeros((), device=device), 0
        last.update(
            train_perplexity=train_ppl, val_perplexity=metrics["perplexity"], val_bits_per_char=metrics["bits_per_char"]
        )
        if not math.isfinite(metrics["perplexity"]) or not all(
            bool(torch.isfinite(p).all()) for p in model.parameters()
        ):
            raise TextrnnError(
                f"training diverged at step {counters['step']} (validation loss is not finite): lower --lr; "
                f"{_kept(out_dir)}"
            )
        improved = save and metrics["perplexity"] < counters["best_val"]
        if improved:
            counters["best_val"] = metrics["perplexity"]
        if improved and world.main:
            checkpoint.write_tensors(
                out_dir / "best.pt",
                {"model": model.state_dict(), "step": counters["step"], "val_perplexity": metrics["perplexity"]},
            )
        record = {
            "step": counters["step"],
            "epoch": counters["epoch"],
            "tokens": counters["tokens"],
            "elapsed_sec": round(counters["elapsed"], 3),
            "lr": optimizer.param_groups[0]["lr"],
            "train_perplexity": train_ppl,
            "val_perplexity": metrics["perplexity"],
            "val_bits_per_char": metrics["bits_per_char"],
            "best_val_perplexity": counters["best_val"],
            "tokens_per_sec": counters["tokens"] / max(counters["train_time"], 1e-9),
        }
        every_row = world.gather_rows(hidden) if save else None  # every process takes part in the gathers
        every_rng = world.gather_objects(_rng_state()) if save else None
        if save and world.main:  # not when a finished run is resumed with nothing left to do
            trainer_state = {
                "optimizer": optimizer.state_dict(),
                "counters": dict(counters),
                "rng": every_rng,
                "hidden": map_state(lambda tensor: tensor.detach().cpu(), every_row),
            }
            checkpoint.write_tensors(out_dir / "last.pt", {"model": model.state_dict(), "trainer": trainer_state})
            checkpoint.append_metrics(out_dir, record)
        eval_time += time.perf_counter() - started
        report("eval", dict(record, improved=improved))

    def agreed_stop() -> tuple[bool, bool]:
        """(interrupted, finished), the same in every process. With several processes they compare notes
        every AGREE_EVERY steps only (a collective is a host sync): a stop request and the slowest clock
        count from there, while step and epoch limits, the same everywhere, are exact."""
        nonlocal shared_elapsed
        stop = should_stop is not None and should_stop()
        if not world.active:
            return stop, finished()
        stop_any = False
        if counters["step"] % AGREE_EVERY == 0:
            stop_any, shared_elapsed = world.agree(stop, elapsed())
        return stop_any, progress(counters["step"], shared_elapsed) >= 1.0

    rows = world.rows(train_config.batch_size)
    shared_elapsed = elapsed_at_start
    done = finished()
    with checkpoint.locked(out_dir) if world.main else contextlib.nullcontext():  # one trainer per run directory
        model.train()
        while not (done or interrupted):
            for inputs, targets in batches.epoch(counters["epoch"], counters["batch"]):
                inputs, targets = inputs[rows], targets[rows]
                now = shared_elapsed if world.active else elapsed()
                lr = learning_rate(train_config, counters["step"], progress(counters["step"], now))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits, hidden = stepper(inputs, detach_state(hidden) if carry_state else None)
                if bf16 and hidden is not None:  # carry the state in fp32 like the weights
                    hidden = map_state(lambda tensor: tensor.float(), hidden)
                if infill:  # each position predicts its own token from both sides
                    targets = inputs
                loss = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # The norm also tells a non-finite step; an infinite threshold leaves the gradients as they are.
                threshold = train_config.clip if train_config.clip > 0 else math.inf
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), threshold, foreach=True)
                # Skipping needs the norm on the host: free on the CPU, a sync on a GPU, where divergence
                # is caught instead at the next validation (non-finite loss or weights stop the run there).
                if check_steps and not bool(torch.isfinite(norm)):
                    optimizer.zero_grad(set_to_none=True)
                    hidden = None  # the state may be poisoned too
                    counters["batch"] += 1
                    counters["skipped_steps"] += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= train_config.max_bad_steps:
                        raise TextrnnError(
                            f"training stopped: {bad_in_a_row} steps in a row had a non-finite loss or gradient "
                            f"(at step {counters['step']}): lower --lr or check the data; "
                            f"{_kept(out_dir)}"
                        )
                    interrupted, done = agreed_stop()
                    if done or interrupted:
                        break
                    continue
                bad_in_a_row = 0
                optimizer.step()
                loss_sum += loss.detach()
                window_sum += loss.detach()
                loss_steps += 1
                window_steps += 1
                counters["step"] += 1
                counters["batch"] += 1
                counters["tokens"] += inputs.numel() * world.size
                step = counters["step"]
                report("step", {"step": step, "progress": progress(step, elapsed())})
                if step % LOG_EVERY == 0:
                    train_time = train_time_at_start + (time.perf_counter() - segment_start) - eval_time
                    report(
                        "log",
                        {
                            "step": step,
                            "train_perplexity": _exp(float(world.mean(loss_sum)) / loss_steps),
                            "tokens_per_sec": counters["tokens"] / max(train_time, 1e-9),
                            "lr": lr,
                        },
                    )
                    loss_sum, loss_steps = torch.zeros((), device=device), 0
                if step % train_config.eval_every == 0:
                    evaluate_and_save()
                interrupted, done = agreed_stop()
                if done or interrupted:
                    break
            else:  # the epoch ran to its end: the next one starts with a fresh state
                counters["epoch"] += 1
                counters["batch"] = 0
                hidden = None

        if window_steps or not math.isfinite(last["val_perplexity"]):
            evaluate_and_save(save=counters["step"] > first_step or not resume)
        total_elapsed = elapsed()
        summary = {
            "tokens_per_sec": counters["tokens"] / max(counters["train_time"], 1e-9),
            "train_perplexity": last["train_perplexity"],
            "val_perplexity": last["val_perplexity"],
            "best_val_perplexity": counters["best_val"],
            "val_bits_per_char": last["val_bits_per_char"],
            "steps": counters["step"],
            "tokens": counters["tokens"],
            "elapsed_sec": total_elapsed,
            "checkpoint": str(out_dir),
            "interrupted": interrupted,
            "parameters": parameters,
            "skipped_steps": counters["skipped_steps"],
        }
        report("end", summary)
    world.close()
    return summary
