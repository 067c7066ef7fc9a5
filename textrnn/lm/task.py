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
from textrnn.lm.finetune import check_origin, grown_state, open_origin, unknown_line
from textrnn.lm.model import CharLM
from textrnn.nn import activation_regularization, map_state, temporal_activation_regularization
from textrnn.text.batching import Batches
from textrnn.text.splits import document_starts, load_splits, pieces, unknown_characters
from textrnn.text.tokenizer import load_tokenizer
from textrnn.train.distributed import join
from textrnn.train.state import given_now, resumed_config
from textrnn.train.task import Task
from textrnn.train.trainer import fit

IGNORED = -100  # a target cross_entropy skips: the first token of a document, after the end of the one before


def forward_documents(model, inputs, state, marks, activations: bool):
    """``model`` over a batch of several documents: ``marks`` (B, T + 1) bool on the CPU (``text.batching``) says
    where a row's input starts a document; the batch is read in pieces between those columns, the state of the
    rows that start a document zeroed there. Returns logits (B, T, V), the state, and with ``activations`` the
    last layer's outputs ``(raw, dropped)`` (else None)."""
    columns = torch.nonzero(marks[:, :-1].any(0)).flatten().tolist()  # a CPU tensor: no device sync
    bounds = sorted({0, *columns, inputs.shape[1]})
    outputs = []
    for begin, end in zip(bounds, bounds[1:]):
        if begin in columns and state is not None:
            keep = (~marks[:, begin]).to(inputs.device, torch.float32, non_blocking=True)
            state = map_state(lambda tensor, keep=keep: tensor * keep.view(1, -1, *[1] * (tensor.dim() - 2)), state)
        output = model(inputs[:, begin:end], state, activations=activations)
        state = output[1]
        outputs.append(output)
    logits = torch.cat([output[0] for output in outputs], dim=1)
    if not activations:
        return logits, state, None
    raw, dropped = (torch.cat([output[2][part] for output in outputs], dim=1) for part in (0, 1))
    return logits, state, (raw, dropped)


class LanguageModelTask(Task):
    """A ``CharLM`` on token batches ``(B, T)``; validation: exact perplexity with the state carried."""

    metric = "perplexity"
    unit = "tokens"

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        splits: dict,
        data: dict,
        tokenizer,
        device,
        initial_state: dict | None = None,
    ):
        self.model_config = model_config
        self.train_config = train_config
        self.data = data
        self.initial_state = initial_state  # fine-tuning: the weights the model starts from
        self.notes: list[str] = []  # lines the progress printer shows first
        self.infill = model_config.task == "infill"
        self.batch_stream = Batches(
            torch.from_numpy(splits["train"]).to(device),
            train_config.batch_size,
            train_config.num_steps,
            train_config.partition,
            train_config.seed,
            starts=None if self.infill else document_starts(data, "train"),
        )
        self.val_tokens = torch.from_numpy(splits["val"]).to(device)
        self.val_starts = document_starts(data, "val")
        # bits per character, whatever the tokens: the characters of the tokens predicted
        self.val_characters = sum(
            tokenizer.count_characters(piece[1:]) for piece in pieces(splits["val"], self.val_starts)
        )
        if self.batch_stream.starts:  # the documents' boundaries move from batch to batch
            self.graph_obstacle = "CUDA graphs: off for several documents (their starts differ per batch); eager steps"
        self.per_epoch = self.batch_stream.per_epoch
        self.batch_size = train_config.batch_size
        # The backward direction of an infill model cannot carry state from text it has not read.
        self.carries_state = self.batch_stream.carries_state and not self.infill
        self.even_rows = True

    def build_model(self) -> CharLM:
        model = CharLM(self.model_config)
        if self.initial_state is not None:  # a larger vocabulary grows the run's rows (see lm.finetune)
            model.load_state_dict(grown_state(self.initial_state, model.state_dict()))
        return model

    def start_info(self) -> dict:
        """The corpus, and ``source``: what a progress line says is trained on."""
        data, tokens = self.data, self.data["tokens"]
        corpus = data["corpus"] if isinstance(data["corpus"], str) else " ".join(data["corpus"])
        notes = list(self.notes)
        if data.get("documents"):
            skipped = ", ".join(f"{count} {kind}" for kind, count in data["skipped"].items() if count)
            corpus = f"{len(data['documents'])} documents of {corpus}"
            if skipped:
                notes.append(f"skipped {skipped} files of {' '.join(data['paths'])}")
        source = (
            f"{corpus} ({data['normalize']} normalization; {tokens['train']:,} train / {tokens['val']:,} val / "
            f"{tokens['test']:,} test tokens)"
        )
        return {"data": data, "source": source, "notes": notes}

    def batches(self, epoch: int, start: int):
        return self.batch_stream.epoch(epoch, start)

    def loss(self, model, batch, state):
        inputs, targets = batch[0], batch[1]
        alpha, beta = self.train_config.ar_alpha, self.train_config.tar_beta
        # AR on the last layer's outputs after its locked dropout, TAR on them before (AWD-LSTM)
        if len(batch) > 2:  # several documents: the state restarts where one begins
            logits, state, activations = forward_documents(model, inputs, state, batch[2], bool(alpha or beta))
            targets = targets.masked_fill(batch[2][:, 1:].to(targets.device, non_blocking=True), IGNORED)
            raw, dropped = activations if activations else (None, None)
        elif alpha or beta:
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
        total, count = cross_entropy_sum(model, self.val_tokens, self.train_config.num_steps, self.val_starts)
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
    model_config: ModelConfig | None,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data_dir: Path | None = None,
    callback=None,
    should_stop=None,
    init_from: str | Path | None = None,
    extend_vocab: bool = False,
) -> dict:
    """Train a character language model and return the summary (the ``--json`` keys of ``train``).

    ``resume=True`` continues the run in ``out_dir`` from its last checkpoint: the configs are then those
    stored in the run, with the limits, ``eval_every``, ``patience`` and ``device`` of ``train_config``
    (``train.state.resumed_config`` builds one from the stored config and the options given).
    ``init_from`` (a run directory, or a ``.pt`` file in one) fine-tunes: the new run starts from that run's
    weights, model config (``model_config`` None, or one of the same shape) and tokenizer, and
    ``extend_vocab`` adds the characters of the new corpus that its vocabulary lacks (see ``lm.finetune``).
    ``should_stop()`` is polled after every step: when it says so, a checkpoint is written
    and the summary comes back with ``interrupted: True``.
    """
    out_dir = Path(out_dir)
    model_config, train_config, tokenizer, origin, stored = _starting_point(
        model_config, train_config, out_dir, resume, init_from
    )
    world, device = join(train_config.device)
    with world.main_first():  # a large corpus is prepared once, by the first process
        tokenizer, splits, data = load_splits(train_config, data_dir, tokenizer)
    if resume and data["sha1"] != stored["data"]["sha1"]:
        raise TextrnnError(
            f"the corpus {data['path'] or ' '.join(data['paths'])} changed since the run began (sha1 differs): "
            "it cannot be resumed"
        )
    added = []
    if origin is not None:
        tokenizer, splits, data, added = _vocabulary_for(
            origin, train_config, data_dir, tokenizer, splits, data, extend_vocab
        )
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    if train_config.precision == "bf16" and device.type == "cuda" and model_config.backend == "fused":
        raise TextrnnError(
            "--precision bf16 on a GPU would run cuDNN's recurrent kernels in fp16 (autocast's rule for them), "
            "without loss scaling: use --backend scratch with bf16, or --precision fp32"
        )
    sections = {"model": model_config, "train": train_config, "data": data}
    sections["tokenizer"] = {"type": train_config.tokenizer, "normalize": data["normalize"], "file": "tokenizer.json"}
    if origin is not None:
        sections["init_from"] = origin.record(added)
    task = LanguageModelTask(
        model_config, train_config, splits, data, tokenizer, device, None if origin is None else origin.state
    )
    if origin is not None:
        task.notes.append(
            f"fine-tuning from {origin.run_dir} ({origin.weights} weights)"
            + (f"; {len(added)} characters added to its vocabulary: {''.join(added)!r}" if added else "")
        )
    summary = fit(
        task,
        train_config,
        out_dir,
        world=world,
        device=device,
        resume=resume,
        run_config=checkpoint.run_config("charlm", **sections),
        tokenizer=tokenizer,
        callback=callback,
        should_stop=should_stop,
    )
    if origin is not None:
        summary["init_from"] = sections["init_from"]["run"]
    return summary


def plan(
    model_config: ModelConfig | None,
    train_config: TrainConfig,
    *,
    data_dir: Path | None = None,
    init_from: str | Path | None = None,
    extend_vocab: bool = False,
) -> dict:
    """What ``train`` would do with these arguments, without training or writing anything (``train --dry-run``):
    the resolved ``model`` and ``train`` configs (vocabulary size filled in), the corpus (``data``, the number of
    documents instead of their list), ``parameters``, ``batches_per_epoch`` and, when fine-tuning, ``init_from``.
    The same checks as ``train`` run first, so a recipe that would fail fails here."""
    model_config, train_config, tokenizer, origin, _ = _starting_point(
        model_config, train_config, Path("."), False, init_from
    )
    tokenizer, splits, data = load_splits(train_config, data_dir, tokenizer)
    added = []
    if origin is not None:
        tokenizer, splits, data, added = _vocabulary_for(
            origin, train_config, data_dir, tokenizer, splits, data, extend_vocab
        )
    data.pop("unknown_characters", None)
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    batches = Batches(
        torch.from_numpy(splits["train"]),
        train_config.batch_size,
        train_config.num_steps,
        train_config.partition,
        train_config.seed,
    )
    described = {key: value for key, value in data.items() if key != "documents"}
    if "documents" in data:
        described["documents"] = len(data["documents"])
    result = {
        "model": dataclasses.asdict(model_config),
        "train": dataclasses.asdict(train_config),
        "data": described,
        "parameters": sum(parameter.numel() for parameter in CharLM(model_config).parameters()),
        "batches_per_epoch": batches.per_epoch,
    }
    if origin is not None:
        result["init_from"] = origin.record(added)
    return result


def _starting_point(model_config, train_config, out_dir: Path, resume: bool, init_from):
    """``(model config, train config, tokenizer or None, fine-tuning Origin or None, stored config or None)`` of
    a new run, a resumed one (its own configs and tokenizer) or a fine-tuning (the configs checked against the
    run it starts from, its tokenizer)."""
    if resume:
        if init_from is not None:
            raise TextrnnError("--init-from starts a new run and --resume continues one: give one of them")
        stored = checkpoint.read_config(out_dir)
        train_config = resumed_config(checkpoint.train_config_of(stored), given_now(train_config))
        model_config = from_dict(ModelConfig, stored["model"])
        tokenizer = load_tokenizer(out_dir / "tokenizer.json", stored["tokenizer"].get("type", "char"))
        return model_config, train_config, tokenizer, None, stored
    if init_from is not None:
        origin = open_origin(init_from)
        model_config = model_config or origin.model_config
        check_origin(origin, model_config, train_config)
        train_config = dataclasses.replace(train_config, normalize=origin.config["data"]["normalize"])
        return model_config, train_config, origin.tokenizer, origin, None
    if model_config.task == "infill" and train_config.tokenizer != "char":
        raise TextrnnError("--task infill fills one character per blank: use --tokenizer char")
    return model_config, train_config, None, None, None


def _vocabulary_for(origin, train_config, data_dir, tokenizer, splits, data, extend_vocab: bool):
    """A fine-tuning's tokenizer and splits: the run's, or with ``extend_vocab`` grown by the characters of the
    new corpus that it lacks (refused without it) -> ``(tokenizer, splits, data, added characters)``."""
    unknown = unknown_characters(data)
    data.pop("unknown_characters", None)
    if not unknown:
        return tokenizer, splits, data, []
    if not extend_vocab:
        raise TextrnnError(unknown_line(unknown, train_config.corpus))
    added = sorted(unknown)
    tokenizer = tokenizer.extended(added)
    tokenizer, splits, data = load_splits(train_config, data_dir, tokenizer)
    data.pop("unknown_characters", None)
    return tokenizer, splits, data, added
