"""``textrnn bench``, ``textrnn plot`` and ``textrnn export``: measuring, drawing and exporting runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from textrnn.cli.common import (
    command,
)
from textrnn.errors import TextrnnError


@click.command()
@click.option("--quick", is_flag=True, help="The d2l size and a few configurations only: under a minute.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=int, help="torch threads in every measurement.  [default: torch's choice]")
@click.option(
    "--corpus",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Text to train on.  [default: 1 MB of synthetic text]",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results as JSON here."
)
@command
def bench(quick, device, threads, corpus, json_path):
    """Training, evaluation and sampling speed and peak memory per cell, backend and size, each next to a
    d2l-style loop measured in the same run; corpus loading at 1, 10 and 100 MB (also scripts/bench.py)."""
    from textrnn.bench import run_suite

    if device == "cuda":
        from textrnn.train.distributed import resolve_device

        resolve_device("cuda")  # a clear error without a GPU
    if threads is not None and not 1 <= threads <= 1024:
        raise TextrnnError(f"--threads must be in [1, 1024], got {threads}")

    def report(job, result):
        from textrnn.bench import describe

        click.echo(describe(job, result), err=True)

    record = run_suite(quick, device, threads, str(corpus) if corpus else None, report=report)
    click.echo(record["table"])
    if json_path is not None:
        from textrnn.atomic import atomic_write

        atomic_write(json_path, (json.dumps(record, indent=2) + "\n").encode())


@click.command()
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="curves.png",
    show_default=True,
    help="PNG to write.",
)
@click.option("--title", help="Figure title.  [default: what is drawn and the run names]")
@command
def plot(runs, out, title):
    """Draw training curves from the metrics.jsonl of RUNS (run directories, overlaid; default: the newest run):
    perplexity and bits/char against tokens and wall time, or validation sMAPE for forecasting runs."""
    from textrnn.checkpoint import newest_run
    from textrnn.plots import plot_runs

    plot_runs(list(runs) or [newest_run()], out, title)
    click.echo(f"wrote {out}", err=True)


@click.command()
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="Run directory (language model or forecaster).  [default: the newest run in checkpoints/]",
)
@click.option("--weights", type=click.Choice(["best", "last"]), help="Which weights of the run.  [default: best]")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="model.onnx",
    show_default=True,
    help="File to write.",
)
@click.option("--json", "json_output", is_flag=True, help="Print only a JSON object on stdout.")
@command
def export(export_format, checkpoint, weights, out, json_output):
    """Export a run to ONNX, checked against PyTorch with onnxruntime first: a language model as its one step
    (tokens, state) -> (logits, state), with tokenizer.json beside it; a forecaster as window -> forecast."""
    from textrnn.export import export_run

    result = export_run(checkpoint, out, weights, export_format)
    if json_output:
        click.echo(json.dumps(result))
    else:
        beside = f" and {result['tokenizer']}" if result["tokenizer"] else ""
        click.echo(
            f"wrote {result['out']}{beside} ({result['bytes']:,} bytes, opset {result['opset']}) from "
            f"{result['checkpoint']}: inputs {', '.join(result['inputs'])} -> {', '.join(result['outputs'])}; "
            f"onnxruntime agrees with PyTorch within {result['max_abs_difference']:.1e}"
        )


COMMANDS = (bench, plot, export)
