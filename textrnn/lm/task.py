"""The language-model task: next-character (or infill) prediction on a text corpus, trained by ``trainer.fit``.

``train`` is the library's entry point (``textrnn train``): it sets up the corpus, the
tokenizer and the run directory, and hands a ``LanguageModelTask`` to the one trainer.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from textrnn import checkpoint
from textrnn.config import ModelConfig, TrainConfig, from_dict
from textrnn.errors import TextrnnError
from textrnn.lm.evaluate import cross_entropy_sum, metrics_from_sum
from textrnn.lm.model import CharLM
from textrnn.nn import activation_regularization, temporal_activation_regularization
from textrnn.text.batching import Batches
from textrnn.text.splits import load_splits
from textrnn.text.tokenizer import load_tokenizer
from textrnn.train.distributed import join
from textrnn.train.state import given_now, resumed_config
from textrnn.train.task import Task
from textrnn.train.trainer import fit


class LanguageModelTask(Task):
    """A ``CharLM`` on token batches ``(B, T)``; validation: exact perplexity with the state carried."""

    metric = "perplexity"
    unit = "tokens"

    def __init__(
        self, model_config: ModelConfig, train_config: TrainConfig, splits: dict, data: dict, tokenizer, device
    ):
        self.model_config = model_config
        self.train_config = train_config
        self.data = data
        self.infill = model_config.task == "infill"
        self.batch_stream = Batches(
            torch.from_numpy(splits["train"]).to(device),
            train_config.batch_size,
            train_config.num_steps,
            train_config.partition,
            train_config.seed,
        )
        self.val_tokens = torch.from_numpy(splits["val"]).to(device)
        self.val_characters = tokenizer.count_characters(splits["val"][1:])  # bits per character, whatever the tokens
        self.per_epoch = self.batch_stream.per_epoch
        self.batch_size = train_config.batch_size
        # The backward direction of an infill model cannot carry state from text it has not read.
        self.carries_state = self.batch_stream.carries_state and not self.infill
        self.even_rows = True

    def build_model(self) -> CharLM:
        return CharLM(self.model_config)

    def start_info(self) -> dict:
        """The corpus, and ``source``: what a progress line says is trained on."""
        data, tokens = self.data, self.data["tokens"]
        source = (
            f"{data['corpus']} ({data['normalize']} normalization; {tokens['train']:,} train / {tokens['val']:,} val / "
            f"{tokens['test']:,} test tokens)"
        )
        return {"data": data, "source": source}

    def batches(self, epoch: int, start: int):
        return self.batch_stream.epoch(epoch, start)

    def loss(self, model, batch, state):
        inputs, targets = batch
        alpha, beta = self.train_config.ar_alpha, self.train_config.tar_beta
        if alpha or beta:  # AR on the last layer's outputs after its locked dropout, TAR on them before (AWD-LSTM)
            logits, state, (raw, dropped) = model(inputs, state, activations=True)
        else:
            logits, state = model(inputs, state)
        if self.infill:  # each position predicts its own token from both sides
            targets = inputs
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if alpha:
            loss = loss + activation_regularization(dropped.float(), alpha)
        if beta:
            loss = loss + temporal_activation_regularization(raw.float(), beta)
        return loss, state

    def validate(self, model) -> dict:
        total, count = cross_entropy_sum(model, self.val_tokens, self.train_config.num_steps)
        metrics = metrics_from_sum(float(total), count, self.val_characters)
        return {"val_perplexity": metrics["perplexity"], "val_bits_per_char": metrics["bits_per_char"]}

    def invalid_validation(self, step: int) -> str:
        return f"training diverged at step {step} (validation loss is not finite): lower --lr"

    def train_figures(self, mean_loss: float) -> dict:
        return {"train_perplexity": math.exp(mean_loss) if mean_loss < 700 else math.inf}

    def summary(self, result: dict, model, main: bool) -> dict:
        figures = {**result["last_train"], **result["last_val"]}  # absent (nan) when no step was taken
        keys = ("train_perplexity", "val_perplexity", "val_bits_per_char")
        kept = ("tokens_per_sec", "steps", "tokens", "elapsed_sec", "checkpoint", "interrupted", "stopped_early")
        return {
            **{key: figures.get(key, math.nan) for key in keys},
            **{key: result[key] for key in (*kept, "parameters", "skipped_steps")},
            "best_val_perplexity": result["best_val"],
        }


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

    ``resume=True`` continues the run in ``out_dir`` from its last checkpoint: the configs are then those
    stored in the run, with the limits, ``eval_every``, ``patience`` and ``device`` of ``train_config``
    (``train.state.resumed_config`` builds one from the stored config and the options given).
    ``should_stop()`` is polled after every step: when it says so, a checkpoint is written
    and the summary comes back with ``interrupted: True``.
    """
    out_dir = Path(out_dir)
    tokenizer = None
    if resume:
        stored = checkpoint.read_config(out_dir)
        train_config = resumed_config(checkpoint.train_config_of(stored), given_now(train_config))
        model_config = from_dict(ModelConfig, stored["model"])
        tokenizer = load_tokenizer(out_dir / "tokenizer.json", stored["tokenizer"].get("type", "char"))
    elif model_config.task == "infill" and train_config.tokenizer != "char":
        raise TextrnnError("--task infill fills one character per blank: use --tokenizer char")
    world, device = join(train_config.device)
    with world.main_first():  # a large corpus is prepared once, by the first process
        tokenizer, splits, data = load_splits(train_config, data_dir, tokenizer)
    if resume and data["sha1"] != stored["data"]["sha1"]:
        raise TextrnnError(
            f"the corpus {data['path']} changed since the run began (sha1 differs): it cannot be resumed"
        )
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    if train_config.precision == "bf16" and device.type == "cuda" and model_config.backend == "fused":
        raise TextrnnError(
            "--precision bf16 on a GPU would run cuDNN's recurrent kernels in fp16 (autocast's rule for them), "
            "without loss scaling: use --backend scratch with bf16, or --precision fp32"
        )
    return fit(
        LanguageModelTask(model_config, train_config, splits, data, tokenizer, device),
        train_config,
        out_dir,
        world=world,
        device=device,
        resume=resume,
        run_config=checkpoint.run_config(
            "charlm",
            model=model_config,
            train=train_config,
            tokenizer={"type": train_config.tokenizer, "normalize": data["normalize"], "file": "tokenizer.json"},
            data=data,
        ),
        tokenizer=tokenizer,
        callback=callback,
        should_stop=should_stop,
    )
