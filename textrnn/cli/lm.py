"""Thin click commands: parse options, build configs, call the library, print.

Bad input raises ``TextrnnError`` in the library; here it becomes one line on stderr
and exit status 1 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from textrnn.checkpoint import json_safe
from textrnn.cli.common import (
    command,
    given,
    parse_cells,
    run_with_progress,
    set_threads,
    warn_ignored_on_resume,
)
from textrnn.cli.options import (
    LANGUAGE_MODEL,
    LANGUAGE_MODEL_WORDS,
    MODEL,
    OPTIMIZATION,
    some_options,
    training_options,
)
from textrnn.config import (
    DEVICES,
    ModelConfig,
    TrainConfig,
)
from textrnn.errors import TextrnnError
from textrnn.lm.dynamic import DynamicConfig
from textrnn.tables import columns, number

training_options = functools.partial(training_options, (ModelConfig, TrainConfig), LANGUAGE_MODEL_WORDS)


def _configs(options: dict, cell: str | None) -> tuple[ModelConfig, TrainConfig]:
    if cell is not None:
        options = {**options, "cell": cell}
    if options.get("task") == "infill" and options.get("bidirectional") is None:
        options = {**options, "bidirectional": True}  # infill reads both sides by definition
    return ModelConfig(**given(options, ModelConfig)), TrainConfig(**given(options, TrainConfig))


def _train_with_progress(model_config, train_config, out, resume=False, data_dir=None, tensorboard=None, **more):
    from textrnn.lm.task import train

    arguments = {"model_config": model_config, "train_config": train_config, "out_dir": out, "data_dir": data_dir}
    return run_with_progress(train, tensorboard, resume=resume, **arguments, **more)


def _finetune_configs(init_from: Path, options: dict, cell: str | None) -> tuple[ModelConfig, TrainConfig]:
    """The configs of ``--init-from``: the run's model and tokenizer, the training options given."""
    from textrnn.lm.finetune import finetune_configs, open_origin

    model_options = given({**options, "cell": cell}, ModelConfig)
    return finetune_configs(open_origin(init_from), model_options, given(options, TrainConfig))


@click.command()
@training_options(MODEL, LANGUAGE_MODEL, OPTIMIZATION)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory.  [default: checkpoints/<cell>-<date-time>]",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out (default: the newest run) from its last checkpoint."
)
@click.option(
    "--tensorboard",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also log the curves (perplexities, bits/char, lr, gradient norm, tokens/s) to TensorBoard in this directory.",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    help="Fine-tune: start from this run's weights (its best; RUN/last.pt for the last), model and tokenizer, with a "
    "fresh optimizer, schedule and limits. Options that change the model's shape or tokenizer are refused.",
)
@click.option(
    "--extend-vocab",
    is_flag=True,
    help="With --init-from: add the corpus's characters that the run's vocabulary lacks (new rows at the mean of the "
    "old ones, rarely predicted at first) instead of refusing them.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved recipe (as TOML that --config reads back), the parameter count and the batches per epoch, "
    "and exit without training.",
)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON summary on stdout.")
@command
def train(out, resume, tensorboard, data_dir, threads, json_output, cell, init_from, extend_vocab, dry_run, **options):
    """Train a character language model (default: the CPU recipe on the Time Machine, about 5 minutes)."""
    from textrnn.checkpoint import newest_run, read_config, train_config_of
    from textrnn.train.state import resumed_config

    if extend_vocab and init_from is None:
        raise TextrnnError("--extend-vocab grows the vocabulary of the run given by --init-from: add --init-from RUN")
    if init_from is not None and resume:
        raise TextrnnError("--init-from starts a new run and --resume continues one: give one of them")
    if init_from is not None:
        model_config, train_config = _finetune_configs(init_from, options, cell)
    else:
        model_config, train_config = _configs(options, cell)
    set_threads(threads)
    if dry_run:
        if resume:
            raise TextrnnError("--dry-run shows the recipe of a new run: drop --resume")
        _dry_run(model_config, train_config, data_dir, init_from, extend_vocab, json_output)
        return
    if resume:
        out = out or newest_run()
        warn_ignored_on_resume({**options, "cell": cell})
        train_config = resumed_config(train_config_of(read_config(Path(out))), options)
    if out is None:
        out = Path("checkpoints") / f"{model_config.cell}-{datetime.now():%Y%m%d-%H%M%S}"
    if tensorboard is not None:
        from textrnn.train.tensorboard import require_tensorboard

        require_tensorboard()  # before training, not after
    more = {"init_from": init_from, "extend_vocab": extend_vocab} if init_from is not None else {}
    summary = _train_with_progress(
        model_config, train_config, out, resume=resume, data_dir=data_dir, tensorboard=tensorboard, **more
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun the first process reports for all
        sys.exit(130 if summary["interrupted"] else 0)
    interrupted = summary.pop("interrupted")
    stopped_early = summary.pop("stopped_early")
    summary.pop("parameters")
    skipped = summary.pop("skipped_steps")
    if skipped:
        click.echo(f"warning: {skipped} steps were skipped for a non-finite loss or gradient", err=True)
    if json_output:
        click.echo(json.dumps(json_safe(summary), allow_nan=False))
    else:
        click.echo(
            f"best validation perplexity {number(summary['best_val_perplexity'])} "
            f"(last {number(summary['val_perplexity'])}, {number(summary['val_bits_per_char'])} bits/char) "
            f"after {summary['steps']:,} steps, {summary['tokens']:,} tokens, {summary['elapsed_sec']:.0f} s, "
            f"{summary['tokens_per_sec']:,.0f} tokens/s"
            + (f", stopped early (--patience {train_config.patience})" if stopped_early else "")
            + f"\nsaved in {summary['checkpoint']}"
        )
    if interrupted:
        click.echo(f"interrupted: continue with  textrnn train --out {out} --resume", err=True)
        sys.exit(130)
    if not json_output:
        if model_config.task == "infill":
            click.echo(f'next: textrnn fill --checkpoint {out} "time tr_veller"   or   textrnn eval')
        else:
            click.echo('next: textrnn sample --prefix "time traveller"   or   textrnn eval')


def _dry_run(model_config, train_config, data_dir, init_from, extend_vocab, json_output) -> None:
    from textrnn.lm.task import plan

    result = plan(model_config, train_config, data_dir=data_dir, init_from=init_from, extend_vocab=extend_vocab)
    if json_output:
        click.echo(json.dumps(json_safe(result), allow_nan=False, ensure_ascii=False))
        return
    settings = {**result["model"], **result["train"]}
    settings.pop("vocab_size")  # from the tokenizer, not an option
    click.echo("# the resolved recipe of textrnn train (--config reads it back)")
    for name, value in settings.items():
        click.echo(f"# {name} = (not set)" if value is None else f"{name} = {_toml_value(value)}")
    data = result["data"]
    tokens = data["tokens"]
    click.echo(
        f"# {result['parameters']:,} parameters, vocabulary of {result['model']['vocab_size']:,}, "
        f"{result['batches_per_epoch']:,} batches per epoch; {tokens['train']:,} train / {tokens['val']:,} val / "
        f"{tokens['test']:,} test tokens"
        + (f" from {data['documents']:,} documents" if "documents" in data else "")
        + (f"; fine-tuning from {result['init_from']['run']}" if "init_from" in result else "")
    )


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


@click.command()
@training_options(MODEL, LANGUAGE_MODEL, OPTIMIZATION, skip=("--cell",))
@click.option(
    "--cells",
    default="gru,lstm,rnn_tanh",
    show_default=True,
    help="Comma-separated cells to train one after another with the same options and budget.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the runs, one per cell.  [default: checkpoints/compare-<date-time>]",
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the runs' training curves in this PNG."
)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def compare(cells, out, plot, data_dir, threads, json_output, **options):
    """Train several cells with the same budget and hyperparameters and tabulate the results."""
    names = parse_cells(cells)
    configs = [_configs(options, name) for name in names]  # every config is checked before any training
    if plot is not None:
        from textrnn.plots import require_matplotlib

        require_matplotlib()
    set_threads(threads)
    out = out or Path("checkpoints") / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    rows = []
    for name, (model_config, train_config) in zip(names, configs):
        click.echo(f"== {name}", err=True)
        summary = _train_with_progress(model_config, train_config, out / name, data_dir=data_dir)
        row = {"cell": name, **{key: summary[key] for key in _COMPARE_KEYS}}
        row["val_bits_per_char"] = math.log2(summary["best_val_perplexity"])  # of the best, like the perplexity
        rows.append(row)
        if summary["interrupted"]:
            click.echo(f"interrupted during {name}; the finished runs are in {out}", err=True)
            break
    if json_output:
        click.echo(json.dumps({"runs": [json_safe(row) for row in rows]}, allow_nan=False))
    else:
        click.echo(_table(rows))
    if plot is not None and rows:
        from textrnn.plots import plot_runs

        plot_runs([out / row["cell"] for row in rows], plot)
        click.echo(f"training curves in {plot}", err=True)
    if len(rows) < len(names):
        sys.exit(130)


_COMPARE_KEYS = (
    "parameters",
    "tokens_per_sec",
    "best_val_perplexity",
    "val_bits_per_char",
    "elapsed_sec",
    "checkpoint",
)


def _table(rows: list[dict]) -> str:
    header = ("cell", "parameters", "tokens/s", "best val ppl", "val bits/char", "wall s", "run")
    lines = [
        (
            row["cell"],
            f"{row['parameters']:,}",
            f"{row['tokens_per_sec']:,.0f}",
            number(row["best_val_perplexity"]),
            number(row["val_bits_per_char"]),
            f"{row['elapsed_sec']:.0f}",
            row["checkpoint"],
        )
        for row in rows
    ]
    return columns([header, *lines])


@click.command()
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), help="Run directory.  [default: the newest run in checkpoints/]"
)
@click.option("--weights", type=click.Choice(["best", "last"]), help="Which weights of the run.  [default: best]")
@click.option("--prefix", default="", help="Text to continue; every sample starts with it.")
@click.option(
    "--prefix-file",
    type=click.Path(path_type=Path),
    help="Continue the text of this UTF-8 file instead of --prefix (any length: it is read in chunks, the state "
    "carried).",
)
@click.option(
    "--length", type=int, default=200, show_default=True, help="Tokens to generate (characters with --tokenizer char)."
)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Below 1: safer text; above 1: wilder.")
@click.option("--top-k", type=int, help="Sample among the k most likely characters only.")
@click.option("--top-p", type=float, help="Sample among the most likely characters whose probabilities sum to p.")
@click.option("--greedy", is_flag=True, help="Always take the most likely character.")
@click.option("--seed", type=int, help="Random seed: the same seed gives the same text.")
@click.option("--num-samples", type=int, default=1, show_default=True, help="Independent continuations.")
@click.option(
    "--stop",
    multiple=True,
    help="End a sample before the first occurrence of this text (not printed); repeatable. --length stays the cap.",
)
@click.option(
    "--beam",
    type=int,
    default=1,
    show_default=True,
    help="Beam search with this many beams: the most likely text (length-normalized), deterministic.",
)
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def sample(checkpoint, weights, prefix, prefix_file, device, json_output, **options):
    """Generate text that continues --prefix or --prefix-file (one sample streams to stdout as it is written)."""
    from textrnn.config import SampleConfig
    from textrnn.lm.model import load_run
    from textrnn.lm.sample import generate, prompt_ids
    from textrnn.text.corpus import read_text
    from textrnn.train.distributed import resolve_device

    if prefix_file is not None:
        if prefix:
            raise TextrnnError("--prefix and --prefix-file both give the text to continue: give one of them")
        prefix = read_text(prefix_file)
    config = SampleConfig(**options)
    model, tokenizer, _ = load_run(checkpoint, weights, resolve_device(device))
    seen = tokenizer.normalize(prefix)
    if not json_output and seen.lower() != prefix.lower():
        shown = repr(seen) if len(seen) <= 80 else f"{seen[:80]!r}..."
        click.echo(f"note: the model reads the prefix as {shown} (its training text was normalized)", err=True)
    if not json_output and config.num_samples == 1 and config.beam == 1:
        prompt_ids(model, tokenizer, prefix)  # a bad prefix fails before anything is written
        _stream_sample(model, tokenizer, prefix, config)
        return
    started = time.perf_counter()
    samples = generate(model, prefix, config, tokenizer=tokenizer)
    seconds = time.perf_counter() - started
    generated = sum(len(text) - len(prefix) for text in samples)  # characters, whatever the tokenizer
    chars_per_sec = generated / max(seconds, 1e-9)
    if json_output:
        click.echo(json.dumps({"samples": samples, "chars_per_sec": chars_per_sec}, ensure_ascii=False))
    else:
        click.echo("\n\n".join(samples))


def _stream_sample(model, tokenizer, prefix, config) -> None:
    """Write one sample to stdout as it is generated, flushed every 50 ms: whole characters only, so a
    UTF-8 sequence is never cut. Ctrl-C stops it with what was written kept (exit status 130)."""
    from textrnn.lm.sample import iter_generate

    out = sys.stdout
    pending = [prefix]
    flushed = time.perf_counter()
    try:
        for chunk in iter_generate(model, prefix, config, tokenizer=tokenizer):
            pending.append(chunk.text)
            if time.perf_counter() - flushed > 0.05:
                out.write("".join(pending))
                out.flush()
                pending, flushed = [], time.perf_counter()
        out.write("".join(pending) + "\n")
        out.flush()
    except KeyboardInterrupt:
        out.write("".join(pending) + "\n")
        out.flush()
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `textrnn sample ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


@click.command("eval")
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), help="Run directory.  [default: the newest run in checkpoints/]"
)
@click.option("--weights", type=click.Choice(["best", "last"]), help="Which weights of the run.  [default: best]")
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train"]),
    default="test",
    show_default=True,
    help="Split of the run's corpus to evaluate.",
)
@click.option("--text-file", type=click.Path(path_type=Path), help="Evaluate on this UTF-8 file instead of a split.")
@click.option(
    "--corpus",
    multiple=True,
    help="Evaluate the --split of another corpus (built-in name, file or directory; repeatable), cut with the run's "
    "fractions; characters the run's vocabulary lacks are counted and listed.",
)
@click.option("--glob", help="With a --corpus directory: the files to read (e.g. '*.txt').")
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Cache directory for built-in corpora."
)
@click.option(
    "--dynamic",
    is_flag=True,
    help="Also score with dynamic evaluation (Krause et al. 2018): each segment is scored, then the model takes a "
    "gradient step on it, so it adapts to the text as it reads. The figures are printed beside the static ones.",
)
@click.option("--dynamic-lr", type=float, help=f"With --dynamic: the step size.  [default: {DynamicConfig.lr}]")
@click.option(
    "--dynamic-decay",
    type=float,
    help=f"With --dynamic: the pull back towards the trained weights.  [default: {DynamicConfig.decay}]",
)
@click.option(
    "--dynamic-segment",
    type=int,
    help=f"With --dynamic: tokens scored before each step.  [default: {DynamicConfig.segment}]",
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--threads", type=int, help="CPU threads for torch.  [default: torch's choice]")
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def evaluate(
    checkpoint,
    weights,
    split,
    text_file,
    corpus,
    glob,
    data_dir,
    device,
    threads,
    json_output,
    dynamic,
    **dynamic_options,
):
    """Cross-entropy, perplexity and bits per character, with the state carried through the whole text."""
    from textrnn.lm.evaluate import evaluate_corpus, evaluate_split, evaluate_text, run_splits
    from textrnn.lm.model import load_run
    from textrnn.train.distributed import resolve_device

    settings = {key.removeprefix("dynamic_"): value for key, value in dynamic_options.items() if value is not None}
    if settings and not dynamic:
        raise TextrnnError("--dynamic-lr, --dynamic-decay and --dynamic-segment set dynamic evaluation: add --dynamic")
    dynamic_config = DynamicConfig(**settings) if dynamic else None
    if text_file is not None and corpus:
        raise TextrnnError("--text-file and --corpus both name the text to evaluate: give one of them")
    set_threads(threads)
    model, tokenizer, config = load_run(checkpoint, weights, resolve_device(device))
    if corpus:
        result = evaluate_corpus(model, tokenizer, config, corpus, split, glob, data_dir, dynamic_config)
        source = f"{' '.join(corpus)} {split} split"
    elif text_file is not None:
        train_tokens = run_splits(tokenizer, config, data_dir)["train"] if dynamic else None
        window = config["train"]["num_steps"]
        result = evaluate_text(model, tokenizer, text_file, window, dynamic_config, train_tokens)
        source = str(text_file)
    else:
        result = evaluate_split(model, tokenizer, config, split, data_dir, dynamic_config)
        source = f"{config['data']['corpus']} {split} split"
    if json_output:
        click.echo(json.dumps(json_safe(result), allow_nan=False))
        return
    kind = "infill " if model.config.task == "infill" else ""
    click.echo(
        f"{source} ({config['run_dir']}, {config['weights']} weights): {kind}perplexity {result['perplexity']:.4f}, "
        f"{result['bits_per_char']:.4f} bits/char, cross-entropy {result['cross_entropy']:.4f} nats "
        f"over {result['tokens']:,} tokens ({result['unknown_tokens']:,} unknown)"
    )
    if result.get("unknown_characters"):
        unknown = result["unknown_characters"]
        listed = ", ".join(f"{char!r} ({count:,})" for char, count in list(unknown.items())[:40])
        click.echo(f"{len(unknown)} characters the run's vocabulary lacks, scored as <unk>: {listed}")
    if dynamic:
        figures = result["dynamic"]
        change = 100 * (figures["bits_per_char"] / result["bits_per_char"] - 1)
        click.echo(
            f"dynamic evaluation (lr {figures['lr']:g}, decay {figures['decay']:g}, segments of "
            f"{figures['segment']}): perplexity {figures['perplexity']:.4f}, {figures['bits_per_char']:.4f} bits/char "
            f"({change:+.1f}%)"
        )


@click.command()
@click.argument("text")
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), help="Run directory.  [default: the newest run in checkpoints/]"
)
@click.option("--weights", type=click.Choice(["best", "last"]), help="Which weights of the run.  [default: best]")
@click.option("--sample", "draw", is_flag=True, help="Draw each character instead of taking the most likely one.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="With --sample.")
@click.option("--top-k", type=int, help="With --sample: only the k most likely characters.")
@click.option("--seed", type=int, help="With --sample: the same seed gives the same result.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def fill(text, checkpoint, weights, draw, temperature, top_k, seed, device, json_output):
    """Fill each _ in TEXT with a character predicted from both sides (a model trained with --task infill)."""
    from textrnn.config import SampleConfig
    from textrnn.lm.model import load_run
    from textrnn.lm.sample import fill as fill_blanks
    from textrnn.train.distributed import resolve_device

    config = SampleConfig(greedy=not draw, temperature=temperature, top_k=top_k, seed=seed)
    model, tokenizer, _ = load_run(checkpoint, weights, resolve_device(device))
    filled = fill_blanks(model, text, config, tokenizer=tokenizer)
    click.echo(json.dumps({"text": filled}, ensure_ascii=False) if json_output else filled)


@click.command()
@click.option("--corpus", required=True, help="A UTF-8 text file (or a built-in corpus) to tokenize.")
@some_options(
    (TrainConfig,),
    LANGUAGE_MODEL_WORDS,
    LANGUAGE_MODEL,
    ("--normalize", "--tokenizer", "--vocab-size", "--val-fraction", "--test-fraction"),
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where prepared/ goes.  [default: $TEXTRNN_DATA_DIR, else corpora/, else ~/.cache/textrnn]",
)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def prepare(corpus, data_dir, json_output, **options):
    """Tokenize a large corpus in a stream into a cache that `train` memory-maps (train does this itself, on first
    use, for files of 64 MB or more). Memory stays bounded by 16 MB pieces, not the corpus."""
    import resource

    from textrnn.text.splits import TextSource, load_splits

    source = TextSource(corpus=corpus, **given(options, TextSource))
    started = time.perf_counter()
    tokenizer, splits, data = load_splits(source, data_dir, always_prepare=True)
    result = {
        "cache": data.get("prepared"),
        "tokens": {name: int(len(split)) for name, split in splits.items()},
        "vocab_size": tokenizer.vocab_size,
        "seconds": time.perf_counter() - started,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if json_output:
        click.echo(json.dumps(result))
    else:
        tokens = result["tokens"]
        click.echo(
            f"{tokens['train']:,} train / {tokens['val']:,} val / {tokens['test']:,} test tokens "
            f"({result['vocab_size']:,} in the vocabulary) in {result['cache']}; "
            f"{result['seconds']:.1f} s, peak memory {result['peak_memory_mb']:,.0f} MB"
        )
