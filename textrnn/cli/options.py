"""The options of the training commands, as data: what ``train``/``compare`` and ``forecast train``/``compare``
share, and what each task adds.

An option's value stays None unless given, so the config dataclass's own default decides; the help shows that
default, read from the dataclass, so the two cannot drift apart. A help text may name ``{words}`` that a task
fills in (``{rows}``: what a batch holds, ``{metric}``: what validation scores).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from textrnn.cli.common import load_config
from textrnn.config import (
    AVERAGES,
    BACKENDS,
    CELLS,
    CUDA_GRAPHS,
    DEFAULT_WEIGHT_DROP,
    DEVICES,
    FORECAST_LOSSES,
    OPTIMIZERS,
    PARTITIONS,
    PRECISIONS,
    SCHEDULES,
    TASKS,
)
from textrnn.nn.minimal import BLOCKS
from textrnn.text.tokenizer import NORMALIZATIONS, TOKENIZERS
from textrnn.timeseries.features import CALENDARS

# (flags, click.option keywords; "field": the config field when it is not the flag's name, "default_text": the
# default shown when the dataclass's is not what a user sees)
Option = tuple[tuple[str, ...], dict]

MODEL: list[Option] = [
    (("--cell",), {"type": click.Choice(CELLS), "help": "Recurrent cell."}),
    (("--hidden-size",), {"type": int, "help": "Hidden units per layer and direction."}),
    (("--num-layers",), {"type": int, "help": "Stacked recurrent layers."}),
    (("--dropout",), {"type": float, "help": "Dropout (a new mask per element) {dropout}."}),
    (
        ("--backend",),
        {
            "type": click.Choice(BACKENDS),
            "help": "fused: torch.nn (cuDNN/oneDNN); scratch: textrnn's cells.",
            "default_text": "fused where it exists, else scratch",
        },
    ),
    (("--bidirectional/--unidirectional",), {"default": None, "help": "{bidirectional}"}),
    (
        ("--transition-depth",),
        {"type": int, "help": "Layers inside the recurrent transition (DT-RNN, scratch backend)."},
    ),
]

OPTIMIZATION: list[Option] = [
    (("--batch-size",), {"type": int, "help": "{rows} per batch."}),
    (("--optimizer",), {"type": click.Choice(OPTIMIZERS)}),
    (("--lr",), {"type": float, "help": "Peak learning rate."}),
    (("--weight-decay",), {"type": float, "help": "Weight decay on weight matrices."}),
    (("--clip",), {"type": float, "help": "Gradient-norm clipping threshold; 0 turns it off."}),
    (
        ("--max-bad-steps",),
        {
            "type": int,
            "help": "Skip steps with a non-finite loss or gradient (checked on a CPU); stop after this many in a row "
            "(0: no check).",
        },
    ),
    (("--schedule",), {"type": click.Choice(SCHEDULES), "help": "Learning-rate schedule after warm-up."}),
    (("--warmup-steps",), {"type": int, "help": "Linear warm-up steps."}),
    (
        ("--epochs",),
        {"type": int, "help": "Stop after this many epochs. Any limit given replaces the default budget."},
    ),
    (("--max-steps",), {"type": int, "help": "Stop after this many steps."}),
    (("--max-seconds",), {"type": float, "help": "Stop after this much wall time."}),
    (("--eval-every",), {"type": int, "help": "Steps between validations and checkpoints."}),
    (
        ("--patience",),
        {"type": int, "help": "Stop after this many validations without a better {metric} (0: never)."},
    ),
    (("--seed",), {"type": int, "help": "Random seed."}),
    (("--device",), {"type": click.Choice(DEVICES)}),
    (
        ("--precision",),
        {
            "type": click.Choice(PRECISIONS),
            "help": "bf16: autocast the training steps (CPU; GPU with --backend scratch); fp16 (CUDA): autocast with "
            "a loss scaler on cuDNN's fp16 kernels; tf32 (CUDA): TF32 matrix products. Weights, state and "
            "validation: fp32.",
        },
    ),
    (
        ("--average",),
        {
            "type": click.Choice(AVERAGES),
            "help": "Averaged weights evaluated beside the trained ones (kept as best.pt when better): an "
            "exponential moving average, or NT-ASGD's average of the iterates once validation stops improving.",
        },
    ),
    (("--average-decay",), {"type": float, "help": "With --average ema: the running average's weight per step."}),
    (("--average-after",), {"type": int, "help": "With --average asgd: validations without a gain before it starts."}),
    (
        ("--cuda-graphs",),
        {
            "type": click.Choice(CUDA_GRAPHS),
            "help": "Capture the whole training step in a CUDA graph and replay it (auto: on CUDA where valid).",
        },
    ),
    (("--threads",), {"type": int, "help": "CPU threads for torch.", "default_text": "torch's choice"}),
]

SPLITS: list[Option] = [
    (("--val-fraction",), {"type": float, "help": "Fraction of {data} for validation (best weights, early stopping)."}),
    (("--test-fraction",), {"type": float, "help": "Fraction at the end of {data} for the test scores."}),
]

LANGUAGE_MODEL: list[Option] = [
    (
        ("--corpus",),
        {
            "multiple": True,
            "callback": lambda context, parameter, value: value or None,  # not given: the config's default
            "help": "Built-in corpus (timemachine), a UTF-8 text file, or a directory (read recursively); repeat for "
            "several: each file is a document, split on its own and started from a fresh state.",
        },
    ),
    (
        ("--glob",),
        {
            "help": "With a --corpus directory: the files to read, by name (e.g. '*.txt') or, with a /, by path "
            "below the directory. Hidden, binary and empty files are always skipped.",
            "default_text": "every file",
        },
    ),
    (
        ("--normalize",),
        {
            "type": click.Choice(NORMALIZATIONS),
            "help": "d2l: lowercase letters and single spaces; none: every character.",
            "default_text": "d2l for timemachine, none for files",
        },
    ),
    (
        ("--tokenizer",),
        {
            "type": click.Choice(TOKENIZERS),
            "help": "char: one token per character of the training text; byte: one per UTF-8 byte (any text, no "
            "unknowns); bpe: byte-level BPE learned on the training split.",
        },
    ),
    (
        ("--vocab-size",),
        {"type": int, "help": "With --tokenizer bpe: the vocabulary to learn.", "field": "bpe_vocab_size"},
    ),
    (
        ("--data-dir",),
        {
            "type": click.Path(file_okay=False, path_type=Path),
            "help": "Cache directory for built-in corpora.",
            "default_text": "$TEXTRNN_DATA_DIR, else corpora/, else ~/.cache/textrnn",
        },
    ),
    *SPLITS,
    (("--embedding-size",), {"type": int, "help": "Embedding width."}),
    (
        ("--one-hot/--embedding",),
        {"default": None, "help": "One-hot inputs as in the d2l book, or a learned embedding."},
    ),
    (("--output-depth",), {"type": int, "help": "Layers between the recurrent state and the head (DO-RNN)."}),
    (
        ("--weight-drop",),
        {
            "type": float,
            "help": "DropConnect on the recurrent matrices W_hh, one mask per batch (AWD-LSTM).",
            "default_text": f"{DEFAULT_WEIGHT_DROP}; 0 for mingru and minlstm, which have no W_hh",
        },
    ),
    (
        ("--dropout-embedding",),
        {"type": float, "help": "Locked dropout (one mask per row, shared over time) on the embeddings."},
    ),
    (("--dropout-layers",), {"type": float, "help": "Locked dropout between recurrent layers."}),
    (("--dropout-output",), {"type": float, "help": "Locked dropout on the last layer's outputs, before the head."}),
    (
        ("--embedding-dropout",),
        {"type": float, "help": "Drop whole rows of the embedding matrix (characters); rescale the rest."},
    ),
    (
        ("--tie-weights/--untie-weights",),
        {
            "default": None,
            "help": "The head shares the embedding matrix (through a projection when the widths differ).",
        },
    ),
    (
        ("--zoneout",),
        {"type": float, "help": "Zoneout on h and c: each unit keeps its value with this probability (scratch)."},
    ),
    (
        ("--ar-alpha",),
        {"type": float, "help": "Activation regularization: alpha * mean(h^2) of the last layer's outputs."},
    ),
    (("--tar-beta",), {"type": float, "help": "Temporal activation regularization: beta * mean((h_t - h_(t-1))^2)."}),
    (
        ("--task",),
        {
            "type": click.Choice(TASKS),
            "help": "causal: predict the next character; infill: predict each character from both sides "
            "(bidirectional).",
        },
    ),
    (
        ("--partition",),
        {
            "type": click.Choice(PARTITIONS),
            "help": "sequential: state carried across batches; random: reset each batch.",
        },
    ),
    (("--num-steps",), {"type": int, "help": "Time steps per batch (truncated BPTT length)."}),
    (
        ("--mogrify-rounds",),
        {"type": int, "help": "With --cell mogrifier: rounds in which the input and the state gate each other."},
    ),
    (
        ("--mogrify-rank",),
        {"type": int, "help": "With --cell mogrifier: the rank of the round matrices (0: full rank)."},
    ),
    (
        ("--block",),
        {
            "type": click.Choice(BLOCKS),
            "help": "With --cell mingru or minlstm: layers stacked plain, or pre-norm residual blocks with an MLP.",
        },
    ),
    (
        ("--conv-kernel",),
        {
            "type": int,
            "help": "With --cell mingru or minlstm and --block residual: a causal depthwise convolution of this "
            "width in each block (0: none).",
        },
    ),
]

LANGUAGE_MODEL_WORDS = {
    "config": "TOML file or recipe name (d2l-gru, quick) whose keys set any option; flags override it.",
    "rows": "Rows",
    "metric": "perplexity",
    "data": "the token stream",
    "dropout": "on embeddings, between layers and before the head",
    "bidirectional": "A backward direction too: only for --task infill (it would read the answer in next-character "
    "modelling).",
}

FORECAST_DATA: list[Option] = [
    (
        ("--csv",),
        {
            "multiple": True,
            "help": "CSV file with a header row, or Parquet file; repeat for several files (trained jointly).",
        },
    ),
    (("--time-col",), {"help": "Column holding the timestamps."}),
    (
        ("--target",),
        {"multiple": True, "help": "Column to forecast; repeat (or comma-separate) for several series."},
    ),
    (
        ("--time-format",),
        {
            "help": "strptime format of the timestamps, e.g. '%d/%m/%Y %H:%M'.",
            "default_text": "detected: ISO 8601, 10/1/2004 1:00, ...",
        },
    ),
    (
        ("--dayfirst/--monthfirst",),
        {
            "default": None,
            "help": "Read ambiguous dates such as 01/02/2020 day-first (1 February) or month-first.",
            "default_text": "decided by the data: a day above 12, else month-first with '/', day-first with '.' or '-'",
        },
    ),
    (
        ("--max-gap",),
        {"type": int, "help": "Missing steps filled by time interpolation; longer gaps split the series."},
    ),
    (
        ("--covariates",),
        {
            "multiple": True,
            "help": "Observed columns (known up to the forecast time) the model reads; repeat or comma-separate.",
        },
    ),
    (
        ("--future-covariates",),
        {
            "multiple": True,
            "help": "Known-ahead columns (a temperature forecast, a price plan): read for the steps forecast too; "
            "predict needs them in --future-csv.",
        },
    ),
    (("--country",), {"help": "Public holidays of this ISO 3166 code (US, DE, US-OH) as a known-ahead feature."}),
]

FORECAST: list[Option] = [
    *FORECAST_DATA,
    (
        ("--calendar",),
        {
            "type": click.Choice(CALENDARS),
            "help": "Calendar features (hour, weekday, month, day of year): scaled to [0, 1], sine/cosine pairs, "
            "or none.",
        },
    ),
    (("--lookback",), {"type": int, "help": "Observed steps the model reads."}),
    (("--horizon",), {"type": int, "help": "Steps forecast at once."}),
    (
        ("--season",),
        {"type": int, "help": "Seasonal-naive period in steps.", "default_text": "a day (hourly), a week (daily)"},
    ),
    *SPLITS,
    (
        ("--residual/--direct",),
        {"default": None, "help": "The head predicts the change from the last observed value, or the value itself."},
    ),
    (
        ("--decoder/--no-decoder",),
        {
            "default": None,
            "help": "A recurrent decoder over the horizon (reading the calendar of each target time and the values "
            "whole seasons before it) instead of the direct head (last state -> horizon values).",
        },
    ),
    (
        ("--forking/--no-forking",),
        {
            "default": None,
            "help": "Train the direct head from every position of the window's second half, not only the last "
            "(forking sequences, MQ-RNN): many more forecasts learned per pass of the encoder.",
            "default_text": "on, unless --decoder or --bidirectional",
        },
    ),
    (
        ("--quantiles",),
        {
            "help": "Quantile levels for prediction intervals, e.g. 0.1,0.5,0.9 (each in (0, 1), increasing, with "
            "0.5: the median is the point forecast); trained with the pinball loss instead of --loss.",
            "default_text": "none: point forecasts",
        },
    ),
    (("--loss",), {"type": click.Choice(FORECAST_LOSSES), "help": "Training loss on the scaled values."}),
]

FORECAST_WORDS = {
    "config": "TOML file whose keys set any option (csv and target as lists); flags override it.",
    "rows": "Windows",
    "metric": "sMAPE",
    "data": "each series",
    "dropout": "between layers and before the head",
    "bidirectional": "Read the observed window in both directions.",
}


def defaults_of(*classes) -> dict:
    """Field name -> default of the dataclasses; the first class wins where names repeat."""
    found = {}
    for cls in reversed(classes):
        found.update({field.name: field.default for field in dataclasses.fields(cls)})
    return found


def shown(value) -> str | None:
    if value in (None, ()):
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def make_option(flags: tuple[str, ...], settings: dict, defaults: dict, words: dict):
    """One click option whose value stays None unless given; its help ends with the default it stands for."""
    settings = dict(settings)
    field = settings.pop("field", None) or flags[0].split("/")[0].lstrip("-").replace("-", "_")
    default_text = settings.pop("default_text", None) or shown(defaults.get(field))
    help_text = settings.pop("help", "").format(**words)
    if default_text is not None:
        help_text = f"{help_text}  [default: {default_text}]".strip()
    names = (*flags, field) if field != flags[0].split("/")[0].lstrip("-").replace("-", "_") else flags
    return click.option(*names, help=help_text, **settings)


def _overridden(flags: tuple[str, ...], settings: dict, overrides: dict | None) -> dict:
    """``settings`` without their ``default_text`` where ``overrides`` gives the option's default."""
    field = settings.get("field") or flags[0].split("/")[0].lstrip("-").replace("-", "_")
    if overrides and field in overrides:
        return {key: value for key, value in settings.items() if key != "default_text"}
    return settings


def some_options(configs: tuple, words: dict, group: list[Option], flags: tuple[str, ...], overrides=None):
    """A decorator adding the options of ``group`` named in ``flags`` (a command that shares a few of them), with
    the defaults of ``configs`` then ``overrides``."""
    defaults = {**defaults_of(*configs), **(overrides or {})}
    entries = [(names, _overridden(names, settings, overrides)) for names, settings in group if names[0] in flags]

    def decorate(function):
        for names, settings in reversed(entries):
            function = make_option(names, settings, defaults, words)(function)
        return function

    return decorate


def training_options(
    configs: tuple, words: dict, *groups: list[Option], skip: tuple[str, ...] = (), overrides: dict | None = None
):
    """A decorator adding ``--config`` and the options of ``groups`` (defaults from the dataclasses ``configs``,
    the last of which holds the run's limits, then ``overrides``: field -> the default a command applies),
    minus the flags in ``skip``."""
    defaults = defaults_of(*configs)
    budget = configs[-1]()  # the default budget is filled in when no limit is given
    defaults["epochs"] = f"{budget.epochs} epochs or {budget.max_seconds:.0f} s, whichever comes first"
    defaults.update(overrides or {})
    entries = [(flags, settings) for group in groups for flags, settings in group if flags[0] not in skip]

    def decorate(function):
        for flags, settings in reversed(entries):
            function = make_option(flags, settings, defaults, words)(function)
        return click.option(
            "--config",
            callback=load_config,
            is_eager=True,
            expose_value=False,
            help=words["config"],
        )(function)

    return decorate
