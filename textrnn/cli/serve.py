"""``textrnn serve``: a trained model behind the completions API."""

from __future__ import annotations

from pathlib import Path

import click

from textrnn.cli.common import (
    command,
    set_threads,
)
from textrnn.config import (
    DEVICES,
)
from textrnn.errors import TextrnnError
from textrnn.tables import number


@click.command()
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), help="Run directory.  [default: the newest run in checkpoints/]"
)
@click.option("--weights", type=click.Choice(["best", "last"]), help="Which weights of the run.  [default: best]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option(
    "--threads",
    type=int,
    help="CPU threads for torch.  [default: 1 with several engines, else torch's choice]",
)
@click.option(
    "--engines",
    type=int,
    help="Batching engines over the one model, each in its own thread.  [default: one per core (at most 4) on a "
    "CPU, 1 on a GPU]",
)
@click.option("--model-name", help="The model's id in the API.  [default: the run directory's name]")
@click.option("--max-tokens", type=int, default=4096, show_default=True, help="Most tokens one choice may ask for.")
@click.option("--max-prompt-chars", type=int, default=4096, show_default=True, help="Longest prompt.")
@click.option("--max-n", type=int, default=16, show_default=True, help="Most choices in one request (prompts x n).")
@click.option("--max-batch", type=int, default=256, show_default=True, help="Most streams stepping together.")
@click.option("--max-queue", type=int, default=256, show_default=True, help="Choices that may wait; beyond: 503.")
@click.option(
    "--drain-seconds", type=float, default=30.0, show_default=True, help="On SIGTERM, time open requests get to finish."
)
@command
def serve(checkpoint, weights, host, port, device, threads, engines, model_name, drain_seconds, **limits):
    """Serve a model over the completions API (POST /v1/completions, as vLLM and llama.cpp), with a playground
    page at /. Concurrent requests are batched: one model step advances every open stream."""
    from textrnn.serve.app import bind, load_server, run_server
    from textrnn.serve.request import Limits
    from textrnn.train.distributed import resolve_device

    if not 0 <= port <= 65535:
        raise TextrnnError(f"--port must be in [0, 65535], got {port}")
    if drain_seconds < 0:
        raise TextrnnError(f"--drain-seconds must be non-negative, got {drain_seconds}")
    limits = Limits(**limits)
    set_threads(threads)
    if engines is not None and not 1 <= engines <= 64:
        raise TextrnnError(f"--engines must be in [1, 64], got {engines}")
    app, _, info = load_server(checkpoint, weights, resolve_device(device), limits, model_name, threads, engines)
    sock = bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    address = f"http://{shown_host}:{sock.getsockname()[1]}"
    validation = info["textrnn"]["validation"] or {}
    figures = f", val ppl {number(validation['val_perplexity'])}" if validation.get("val_perplexity") else ""
    click.echo(
        f"serving {info['id']} ({info['textrnn']['weights']} weights{figures}) at {address}/  "
        f"(playground at /, API at /v1/completions; Ctrl-C or SIGTERM stops after open requests finish)",
        err=True,
    )
    run_server(app, drain_seconds=drain_seconds, sock=sock)
