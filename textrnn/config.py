"""Frozen dataclass configs.

They are stored in the checkpoint as plain JSON (``dataclasses.asdict``) and rebuilt
with ``Config(**d)``. The defaults of ``ModelConfig`` and ``TrainConfig`` are the
default recipe: the best setup we found for the Time Machine on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from textrnn.errors import TextrnnError
from textrnn.nn.layers import BACKENDS, CELLS, SCRATCH_ONLY_CELLS, check_backend, check_minimal, check_regularizers
from textrnn.nn.minimal import BLOCKS, MINIMAL_CELLS
from textrnn.nn.regularize import check_probability
from textrnn.text.splits import TextSource, corpus_value
from textrnn.timeseries.features import CALENDARS

TASKS = ("causal", "infill")
DEFAULT_WEIGHT_DROP = 0.2
DEFAULT_EPOCHS = 40
DEFAULT_SECONDS = 290.0
LIMITS = ("epochs", "max_steps", "max_seconds")
RESUMABLE = ("eval_every", "patience", "device")  # what a resumed run takes from the command line besides limits
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")
PARTITIONS = ("sequential", "random")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16", "tf32")
CUDA_GRAPHS = ("auto", "on", "off")
AVERAGES = ("none", "ema", "asgd")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TextrnnError(message)


def _check_training(config) -> None:
    """The checks TrainConfig and ForecastConfig share: optimisation, limits, splits, device."""
    if config.epochs is None and config.max_steps is None and config.max_seconds is None:
        raise AssertionError("the default budget must be filled in before the checks")
    _require(
        config.optimizer in OPTIMIZERS, f"unknown optimizer {config.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
    )
    _require(
        config.schedule in SCHEDULES, f"unknown schedule {config.schedule!r}: choose one of {', '.join(SCHEDULES)}"
    )
    _require(config.device in DEVICES, f"unknown device {config.device!r}: choose one of {', '.join(DEVICES)}")
    _require(config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}")
    _require(0 < config.lr < math.inf, f"--lr must be positive and finite, got {config.lr}")
    _require(0 <= config.seed < 2**63, f"--seed must be in [0, 2**63), got {config.seed}")
    _require(
        0 <= config.weight_decay < math.inf,
        f"--weight-decay must be non-negative and finite, got {config.weight_decay}",
    )
    _require(0 <= config.clip < math.inf, f"--clip must be non-negative and finite (0: off), got {config.clip}")
    _require(config.max_bad_steps >= 0, f"--max-bad-steps must be non-negative, got {config.max_bad_steps}")
    _require(config.warmup_steps >= 0, f"--warmup-steps must be non-negative, got {config.warmup_steps}")
    _require(config.eval_every >= 1, f"--eval-every must be at least 1, got {config.eval_every}")
    _require(config.patience >= 0, f"--patience must be non-negative, got {config.patience}")
    _require(
        config.precision in PRECISIONS, f"unknown precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}"
    )
    _require(
        config.precision == "fp32" or config.device != "mps",
        f"--precision {config.precision} runs on CPUs and CUDA GPUs: use --device cpu or cuda, or --precision fp32",
    )
    _require(config.average in AVERAGES, f"unknown --average {config.average!r}: choose one of {', '.join(AVERAGES)}")
    _require(0 < config.average_decay < 1, f"--average-decay must be in (0, 1), got {config.average_decay}")
    _require(config.average_after >= 1, f"--average-after must be at least 1, got {config.average_after}")
    _require(
        config.cuda_graphs in CUDA_GRAPHS,
        f"unknown --cuda-graphs {config.cuda_graphs!r}: choose one of {', '.join(CUDA_GRAPHS)}",
    )
    _require(config.epochs is None or config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}")
    _require(
        config.max_steps is None or config.max_steps >= 1, f"--max-steps must be at least 1, got {config.max_steps}"
    )
    _require(
        config.max_seconds is None or config.max_seconds >= 0,
        f"--max-seconds must be non-negative (0: no time limit), got {config.max_seconds}",
    )
    for name in ("val_fraction", "test_fraction"):
        value = getattr(config, name)
        _require(0.0 < value < 0.5, f"--{name.replace('_', '-')} must be in (0, 0.5), got {value}")
    _require(
        config.epochs is not None or config.max_steps is not None or config.max_seconds,
        "the run has no end: give --epochs, --max-steps or a positive --max-seconds",
    )


def _check_encoder(config) -> None:
    """The checks ModelConfig and ForecastConfig share: the recurrent encoder (backend "auto" resolved here)."""
    _require(config.cell in CELLS, f"unknown cell {config.cell!r}: choose one of {', '.join(CELLS)}")
    _require(config.hidden_size >= 1, f"--hidden-size must be at least 1, got {config.hidden_size}")
    _require(1 <= config.num_layers <= 100, f"--num-layers must be in [1, 100], got {config.num_layers}")
    _require(0.0 <= config.dropout < 1.0, f"--dropout must be in [0, 1), got {config.dropout}")
    zoneout = getattr(config, "zoneout", 0.0)  # language models only
    if config.backend == "auto":
        scratch = config.cell in SCRATCH_ONLY_CELLS or config.transition_depth > 1 or zoneout > 0
        object.__setattr__(config, "backend", "scratch" if scratch else "fused")
    _require(config.backend in BACKENDS, f"unknown backend {config.backend!r}: choose one of {', '.join(BACKENDS)}")
    check_backend(config.cell, config.backend, config.transition_depth, zoneout)
    _require(config.transition_depth <= 100, f"--transition-depth must be at most 100, got {config.transition_depth}")
    # an infill model reads the text backwards with a second, forward-only stack (see lm.model.CharLM)
    separate_directions = getattr(config, "task", "causal") == "infill"
    check_minimal(config.cell, getattr(config, "weight_drop", 0.0), config.bidirectional and not separate_directions)


def _check_shapes(config) -> None:
    """The cell-specific shapes of a language model: the Mogrifier's rounds, the minimal cells' block."""
    _require(0 <= config.mogrify_rounds <= 100, f"--mogrify-rounds must be in [0, 100], got {config.mogrify_rounds}")
    _require(0 <= config.mogrify_rank <= 100_000, f"--mogrify-rank must be in [0, 100000], got {config.mogrify_rank}")
    _require(config.block in BLOCKS, f"unknown --block {config.block!r}: choose one of {', '.join(BLOCKS)}")
    _require(0 <= config.conv_kernel <= 64, f"--conv-kernel must be in [0, 64], got {config.conv_kernel}")
    _require(
        not (config.block == "plain" and config.conv_kernel),
        "--conv-kernel adds a causal convolution to the residual block: use --block residual or --conv-kernel 0",
    )


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a character language model: embedding -> recurrent encoder -> head."""

    vocab_size: int = 0  # filled in from the tokenizer
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0  # plain dropout (a new mask per element) on embeddings, between layers, before the head
    embedding_size: int = 64
    one_hot: bool = False
    backend: str = "auto"  # fused where it exists, else scratch
    bidirectional: bool = False
    transition_depth: int = 1
    output_depth: int = 1
    task: str = "causal"
    # Regularizers of the AWD-LSTM family (textrnn.nn.regularize); 0 / False: off, as in runs made before them.
    # DropConnect on the recurrent matrices W_hh, one mask per batch. None: 0.2, or 0 for the cells without W_hh
    weight_drop: float | None = None
    dropout_embedding: float = 0.1  # locked dropout (one mask per row over time) on the embedding output
    dropout_layers: float = 0.2  # locked dropout between layers
    dropout_output: float = 0.3  # locked dropout on the last layer's outputs, before the head
    embedding_dropout: float = 0.0  # whole rows of the embedding matrix (characters) dropped
    tie_weights: bool = False  # the head's matrix is the embedding matrix (a projection when the widths differ)
    zoneout: float = 0.0  # zoneout on h and c (scratch cells)
    mogrify_rounds: int = 5  # mogrifier: rounds in which the input and the state gate each other
    mogrify_rank: int = 0  # mogrifier: the rank of the round matrices (0: full rank)
    block: str = "residual"  # mingru, minlstm: "plain" stack or pre-norm "residual" blocks (textrnn.nn.minimal)
    conv_kernel: int = 0  # mingru, minlstm: a causal depthwise convolution of this width in each block (0: none)

    def __post_init__(self) -> None:
        if self.weight_drop is None:
            object.__setattr__(self, "weight_drop", 0.0 if self.cell in MINIMAL_CELLS else DEFAULT_WEIGHT_DROP)
        check_regularizers(self.weight_drop, self.dropout_layers, self.zoneout)
        _check_shapes(self)
        for name in ("dropout_embedding", "dropout_output", "embedding_dropout"):
            check_probability(getattr(self, name), "--" + name.replace("_", "-"))
        _check_encoder(self)
        _require(
            not (self.one_hot and (self.tie_weights or self.embedding_dropout)),
            "--tie-weights and --embedding-dropout act on the embedding: use --embedding, not --one-hot",
        )
        if self.one_hot:  # one-hot inputs are not dropped (as with plain --dropout): store what the model does
            object.__setattr__(self, "dropout_embedding", 0.0)
        _require(self.embedding_size >= 1, f"--embedding-size must be at least 1, got {self.embedding_size}")
        _require(self.vocab_size >= 0, f"vocab_size must be non-negative, got {self.vocab_size}")
        _require(self.task in TASKS, f"unknown task {self.task!r}: choose one of {', '.join(TASKS)}")
        _require(1 <= self.output_depth <= 100, f"--output-depth must be in [1, 100], got {self.output_depth}")
        _require(
            not (self.bidirectional and self.task == "causal"),
            "--bidirectional cannot train a next-character model: the backward direction reads the very character "
            "it must predict, so the loss collapses (the d2l book's bidirectional model reaches perplexity 1.1 and "
            "samples 'time travellererererer'). Use --task infill to predict each character from both sides",
        )
        _require(
            self.bidirectional or self.task == "causal",
            "--task infill needs a bidirectional encoder: add --bidirectional",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Data, optimisation and run-length settings of one training run."""

    corpus: str | tuple[str, ...] = "timemachine"  # a built-in name, a file or a directory; a tuple: several
    normalize: str | None = None  # None: d2l for a built-in corpus, none for files and several documents
    tokenizer: str = "char"  # char: one token per character; byte: one per UTF-8 byte; bpe: byte-level BPE
    bpe_vocab_size: int = 1000  # with tokenizer "bpe": the vocabulary it learns on the training split
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    partition: str = "sequential"
    batch_size: int = 32
    num_steps: int = 35
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    clip: float = 1.0
    max_bad_steps: int = 10  # non-finite steps in a row before the run stops; 0: no check (no per-step host read)
    schedule: str = "cosine"
    warmup_steps: int = 100
    # The run stops at the first limit reached. With none given, the default budget applies:
    # DEFAULT_EPOCHS or DEFAULT_SECONDS (a 2-core CPU reaches the time first, a GPU the epochs).
    epochs: int | None = None
    max_steps: int | None = None
    max_seconds: float | None = None
    eval_every: int = 200
    patience: int = 0  # validations without a better perplexity before stopping early (0: never)
    ar_alpha: float = 0.0  # activation regularization: alpha * mean(h^2) of the last layer's (dropped) outputs
    tar_beta: float = 0.0  # temporal activation regularization: beta * mean((h_t - h_{t-1})^2) of its raw outputs
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # bf16 / fp16: autocast for the training steps (validation stays fp32); tf32 (CUDA)
    cuda_graphs: str = "auto"  # whole-step CUDA graphs where valid (see textrnn.train.step)
    average: str = "ema"  # averaged weights, evaluated beside the trained ones: ema | asgd (see trainer)
    average_decay: float = 0.998  # ema: the weight of the running average at each step
    average_after: int = 2  # asgd: validations without a gain before the averaging starts
    glob: str | None = None  # the files of a --corpus directory to read, by name (*.txt) or path (None: all)

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus", corpus_value(self.corpus))
        if self.epochs is None and self.max_steps is None and self.max_seconds is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS)
            object.__setattr__(self, "max_seconds", DEFAULT_SECONDS)
        _check_training(self)
        for name in ("ar_alpha", "tar_beta"):
            value = getattr(self, name)
            _require(0 <= value < math.inf, f"--{name.replace('_', '-')} must be non-negative and finite, got {value}")
        _require(
            self.partition in PARTITIONS, f"unknown partition {self.partition!r}: choose one of {', '.join(PARTITIONS)}"
        )
        _require(self.num_steps >= 1, f"--num-steps must be at least 1, got {self.num_steps}")
        self.text_source()  # checks the corpus settings

    def text_source(self) -> TextSource:
        """What the text stage reads of this config: the corpus and how to normalize, tokenize and split it."""
        return TextSource(**{field.name: getattr(self, field.name) for field in dataclasses.fields(TextSource)})


@dataclass(frozen=True)
class SampleConfig:
    """How to draw text from a language model."""

    length: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    num_samples: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()  # a sample ends before the first of these it writes (not included)
    beam: int = 1  # above 1: beam search with this many beams (deterministic; no temperature, top-k, top-p)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        _require(all(isinstance(stop, str) and stop for stop in self.stop), "--stop takes non-empty text")
        _require(1 <= self.beam <= 1000, f"--beam must be in [1, 1000], got {self.beam}")
        _require(
            self.beam == 1
            or (self.temperature == 1.0 and self.top_k is None and self.top_p is None and not self.greedy),
            "--beam searches for the most likely text: it takes no --temperature, --top-k, --top-p or --greedy",
        )
        _require(
            self.beam == 1 or self.num_samples <= self.beam,
            f"--num-samples {self.num_samples} is more than --beam {self.beam}: beam search returns at most one "
            "text per beam",
        )
        _require(self.length >= 0, f"--length must be non-negative, got {self.length}")
        _require(
            self.greedy or 1e-3 <= self.temperature <= 1e3,
            f"--temperature must be in [0.001, 1000], got {self.temperature}; use --greedy for the most likely text",
        )
        _require(self.seed is None or 0 <= self.seed < 2**63, f"--seed must be in [0, 2**63), got {self.seed}")
        _require(self.top_k is None or self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}")
        _require(self.top_p is None or 0.0 < self.top_p <= 1.0, f"--top-p must be in (0, 1], got {self.top_p}")
        _require(self.num_samples >= 1, f"--num-samples must be at least 1, got {self.num_samples}")


FORECAST_LOSSES = ("mse", "l1", "huber")
FORECAST_DEFAULT_EPOCHS = 30
FORECAST_DEFAULT_SECONDS = 290.0


@dataclass(frozen=True)
class ForecastConfig:
    """Data, model and training settings of a forecasting run (``textrnn forecast train``).

    The model is the encoder of ``textrnn.nn`` over a window of ``lookback`` steps (the scaled
    target and calendar features), then a linear head from its last state to ``horizon`` values.
    """

    csv: tuple[str, ...] = ()
    time_col: str = "Datetime"
    target: tuple[str, ...] = ()
    time_format: str | None = None  # None: ISO 8601 or a common format, detected
    dayfirst: bool | None = None  # None: day/month order decided by the data (a day above 12)
    max_gap: int = 6  # missing steps interpolated; longer gaps split the series
    covariates: tuple[str, ...] = ()  # observed columns: known up to the forecast time (read in the look-back)
    future_covariates: tuple[str, ...] = ()  # known-ahead columns: also read for the steps forecast
    country: str | None = None  # its public holidays (holidays package) as a known-ahead 0/1 feature
    calendar: str = "linear"
    lookback: int = 90
    horizon: int = 1
    season: int | None = None  # None: a day for sub-daily data, a week for daily data
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    cell: str = "lstm"  # on a CPU oneDNN's fused LSTM is faster than the GRU, and it scored better on AEP
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    backend: str = "auto"
    bidirectional: bool = False
    transition_depth: int = 1
    residual: bool = True  # the head predicts the change from the last observed value
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    clip: float = 1.0
    max_bad_steps: int = 10  # non-finite steps in a row before the run stops (CPU); 0: no check
    loss: str = "mse"
    warmup_steps: int = 100
    epochs: int | None = None
    max_steps: int | None = None
    max_seconds: float | None = None
    patience: int = 5  # evaluations without a better validation loss before stopping early (0: never)
    eval_every: int = 200
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # see TrainConfig
    cuda_graphs: str = "auto"
    average: str = "none"  # see TrainConfig
    average_decay: float = 0.998
    average_after: int = 2
    decoder: bool = False  # a recurrent decoder over the horizon instead of the direct multi-output head
    quantiles: tuple[float, ...] = ()  # quantile levels trained with the pinball loss; (): point forecasts (loss)
    # Train the direct head from every position of the window's second half (MQ-RNN's forking sequences).
    # None: on for the direct head of a unidirectional encoder (measured best on AEP, next hour and day ahead).
    forking: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", check_quantiles(self.quantiles))
        if self.forking is None:
            object.__setattr__(self, "forking", not (self.decoder or self.bidirectional))
        object.__setattr__(self, "csv", tuple(str(path) for path in self.csv))
        object.__setattr__(self, "target", tuple(self.target))
        object.__setattr__(self, "covariates", tuple(self.covariates))
        object.__setattr__(self, "future_covariates", tuple(self.future_covariates))
        if self.epochs is None and self.max_steps is None and self.max_seconds is None:
            object.__setattr__(self, "epochs", FORECAST_DEFAULT_EPOCHS)
            object.__setattr__(self, "max_seconds", FORECAST_DEFAULT_SECONDS)
        _check_encoder(self)
        _check_training(self)
        _require(
            self.loss in FORECAST_LOSSES, f"unknown loss {self.loss!r}: choose one of {', '.join(FORECAST_LOSSES)}"
        )
        _require(
            self.calendar in CALENDARS, f"unknown calendar {self.calendar!r}: choose one of {', '.join(CALENDARS)}"
        )
        _require(bool(self.time_col), "--time-col must name the time column")
        _require(len(set(self.target)) == len(self.target), f"--target names a column twice: {list(self.target)}")
        _require(1 <= self.lookback <= 100_000, f"--lookback must be in [1, 100000], got {self.lookback}")
        _require(1 <= self.horizon <= 10_000, f"--horizon must be in [1, 10000], got {self.horizon}")
        _require(self.season is None or self.season >= 1, f"--season must be at least 1, got {self.season}")
        _require(0 <= self.max_gap <= 1_000_000, f"--max-gap must be in [0, 1000000], got {self.max_gap}")
        _require(
            not (self.decoder and self.bidirectional),
            "--decoder starts from the encoder's final state, which a bidirectional encoder does not end in: "
            "drop --bidirectional or --decoder",
        )
        _require(
            not (self.forking and (self.decoder or self.bidirectional)),
            "--forking trains the direct head of a unidirectional encoder from every position of the window "
            "(a backward direction would see the targets there): drop --decoder / --bidirectional or --forking",
        )


def check_quantiles(levels) -> tuple[float, ...]:
    """Quantile levels as given (a tuple, a list or "0.1,0.5,0.9") -> a tuple of floats, each in (0, 1),
    strictly increasing, with 0.5 among them (the median is the point forecast)."""
    if isinstance(levels, str):
        levels = [part for part in levels.split(",") if part.strip()]
    try:
        levels = tuple(float(level) for level in levels or ())
    except (TypeError, ValueError):
        raise TextrnnError(f"--quantiles takes numbers separated by commas, e.g. 0.1,0.5,0.9; got {levels!r}") from None
    if not levels:
        return ()
    shown = ",".join(f"{level:g}" for level in levels)
    _require(all(0.0 < level < 1.0 for level in levels), f"--quantiles must each be in (0, 1), got {shown}")
    _require(len(set(levels)) == len(levels), f"--quantiles names a level twice: {shown}")
    _require(list(levels) == sorted(levels), f"--quantiles must be in increasing order, got {shown}")
    _require(
        0.5 in levels,
        "--quantiles must include 0.5, the median, which is the point forecast: e.g. "
        + ",".join(f"{level:g}" for level in sorted({*levels, 0.5})),
    )
    return levels


def with_limits(config: TrainConfig, **limits) -> TrainConfig:
    """``config`` with new run limits: any limit given replaces all three (None: unchanged)."""
    given = {name: value for name, value in limits.items() if value is not None}
    if not given:
        return config
    return dataclasses.replace(config, **{name: given.get(name) for name in LIMITS})


# What a run stored before an option existed meant the option off, whatever today's default.
BEFORE_REGULARIZERS = {
    "weight_drop": 0.0,
    "dropout_embedding": 0.0,
    "dropout_layers": 0.0,
    "dropout_output": 0.0,
    "embedding_dropout": 0.0,
    "tie_weights": False,
    "zoneout": 0.0,
}
BEFORE_AVERAGING = {"average": "none", "ar_alpha": 0.0, "tar_beta": 0.0, "patience": 0}


# Forecasting runs stored before forking sequences trained without them (on by default now).
BEFORE_FORKING = {"forking": False}


def from_dict(cls, data: dict):
    """Rebuild a config from JSON, naming unknown keys instead of raising a TypeError."""
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    _require(not unknown, f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(names)}")
    before = {ModelConfig: BEFORE_REGULARIZERS, TrainConfig: BEFORE_AVERAGING, ForecastConfig: BEFORE_FORKING}.get(
        cls, {}
    )
    return cls(**{**before, **data})


PANEL_FORMATS = ("m4", "long")
# The global model's settings where they differ from ForecastConfig's (``textrnn forecast m4``): a week of hourly
# values in, the 48 hours of M4 Hourly out, values scaled by the window's level (so no residual head and no
# forking, whose windows would need a level each), the L1 loss (close to sMAPE on level-scaled values).
PANEL_DEFAULTS = {
    "lookback": 168,
    "horizon": 48,
    "season": 24,
    "hidden_size": 128,
    "loss": "l1",
    "residual": False,
    "forking": False,
    "warmup_steps": 50,
    "eval_every": 100,
    "patience": 0,
    "max_seconds": 300.0,
}


@dataclass(frozen=True)
class PanelConfig:
    """How a global model reads a panel of many series and samples its windows (``textrnn forecast m4``)."""

    train: str = ""
    test: str | None = None  # the values after each series' end (the same format), scored when given
    format: str = "m4"  # m4: one series a row (id, values); long: one value a row (id_col, time_col, target)
    id_col: str | None = None
    time_col: str | None = None
    target: str | None = None
    windows_per_series: int = 64  # windows drawn from every series in an epoch, so long series do not dominate
    level_window: int | None = None  # each window is divided by the mean of its last values (None: one season)
    id_embedding: int = 0  # width of a learned embedding of the series id read at every step (0: none)
    patch: int = 1  # values the encoder reads at each of its steps (24: a day a step, 24 times fewer steps)
    ensemble: int = 1  # models trained with seeds seed, seed + 1, ...: the forecast is their median
    seasonal_residual: bool = False  # the head corrects the seasonal naive forecast of the window (not the level)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", str(self.train or ""))
        object.__setattr__(self, "test", None if self.test is None else str(self.test))
        _require(bool(self.train), "no data: give --train FILE")
        _require(
            self.format in PANEL_FORMATS, f"unknown --format {self.format!r}: choose one of {', '.join(PANEL_FORMATS)}"
        )
        _require(
            1 <= self.windows_per_series <= 1_000_000,
            f"--windows-per-series must be in [1, 1000000], got {self.windows_per_series}",
        )
        _require(
            self.level_window is None or self.level_window >= 1,
            f"--level-window must be at least 1, got {self.level_window}",
        )
        _require(0 <= self.id_embedding <= 4096, f"--id-embedding must be in [0, 4096], got {self.id_embedding}")
        _require(1 <= self.patch <= 10_000, f"--patch must be in [1, 10000], got {self.patch}")
        _require(1 <= self.ensemble <= 100, f"--ensemble must be in [1, 100], got {self.ensemble}")
