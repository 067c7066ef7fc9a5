"""What every textrnn command shares: one-line errors, --config files, threads, stop signals, the progress runner."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import tomllib
from importlib import resources
from pathlib import Path

import click

from textrnn.cli.progress import ProgressPrinter
from textrnn.config import LIMITS, RESUMABLE
from textrnn.errors import TextrnnError


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def command(function):
    """Add ``--debug`` and turn expected failures into one clear line."""

    @click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
    @functools.wraps(function)
    def wrapper(*args, debug: bool, **kwargs):
        try:
            return function(*args, **kwargs)
        except TextrnnError as error:
            if debug:
                raise
            fail(str(error))
        except (MemoryError, RuntimeError) as error:
            if debug or not is_out_of_memory(error):
                raise
            fail("out of memory: use a smaller --hidden-size, --batch-size, --num-steps or --num-samples")
        except OSError as error:  # disk full, permission denied, ...
            if debug:
                raise
            where = f" ({error.filename})" if error.filename else ""
            fail(f"{error.strerror or error}{where}")

    return wrapper


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(
        phrase in text
        for phrase in ("out of memory", "not enough memory", "allocate memory", "size calculation overflowed")
    )


def recipe_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    recipe = resources.files("textrnn") / "recipes" / f"{name}.toml"
    if recipe.is_file():
        return Path(str(recipe))
    available = sorted(
        p.name[:-5] for p in (resources.files("textrnn") / "recipes").iterdir() if p.name.endswith(".toml")
    )
    raise click.BadParameter(
        f"{name} is neither a TOML file nor a recipe ({', '.join(available)})", param_hint="--config"
    )


def load_config(context: click.Context, parameter: click.Parameter, value: str | None):
    """``--config FILE.toml|RECIPE``: its keys become the defaults, so flags given override them."""
    if value is None:
        return None
    path = recipe_path(value)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise click.BadParameter(f"{path} is not valid TOML ({error})", param_hint="--config") from None
    known = {p.name for p in context.command.params} - {"config", "debug", "json_output"}
    settings = {key.replace("-", "_"): item for key, item in data.items()}
    repeatable = {p.name for p in context.command.params if getattr(p, "multiple", False)}
    # corpus = "file.txt" means the one file, as before --corpus could be repeated
    settings = {key: [item] if key in repeatable and isinstance(item, str) else item for key, item in settings.items()}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise click.BadParameter(f"{path} sets unknown options {unknown}", param_hint="--config")
    context.default_map = {**(context.default_map or {}), **settings}
    return str(path)


def warn_ignored_on_resume(options: dict) -> None:
    """A resumed run continues as stored: say which of the options given it will not use."""
    ignored = sorted(
        name for name, value in options.items() if value not in (None, ()) and name not in (*LIMITS, *RESUMABLE)
    )
    if ignored:
        names = ", ".join("--" + name.replace("_", "-") for name in ignored)
        click.echo(f"warning: --resume continues the stored run; ignoring {names}", err=True)


def parse_cells(cells: str) -> list[str]:
    """``--cells gru,lstm``: distinct known cells, in order."""
    from textrnn.config import CELLS

    names = [name.strip() for name in cells.split(",") if name.strip()]
    if not names or any(name not in CELLS for name in names) or len(set(names)) < len(names):
        raise TextrnnError(
            f"--cells takes a comma-separated list of distinct cells from {', '.join(CELLS)}; got {cells!r}"
        )
    return names


def given(values: dict, cls) -> dict:
    names = {field.name for field in dataclasses.fields(cls)}
    return {key: item for key, item in values.items() if key in names and item is not None}


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if not 1 <= threads <= 1024:
        raise TextrnnError(f"--threads must be in [1, 1024], got {threads}")
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def stop_on_signals():
    """While training: Ctrl-C / SIGTERM ask the trainer to stop after the current step (it then saves a
    checkpoint); a second Ctrl-C aborts at once. Yields the ``should_stop`` function for the trainer."""
    stop_requested = []

    def request_stop(signum, frame):
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested.append(signum)
        click.echo("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", err=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(stop_requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_with_progress(train, tensorboard=None, **arguments) -> dict:
    """Run a library training function (``lm.task.train``, ``forecast.task.train_forecaster``) with the progress
    printer (and TensorBoard logs in the directory ``tensorboard``, if given) on its events. Ctrl-C / SIGTERM stop
    it after the current step with a checkpoint."""
    callback = ProgressPrinter()
    if tensorboard is not None and os.environ.get("RANK", "0") == "0":  # under torchrun the first process logs
        from textrnn.train.tensorboard import TensorBoardLogger, tee

        callback = tee(callback, TensorBoardLogger(tensorboard))
    try:
        with stop_on_signals() as should_stop:
            return train(**arguments, callback=callback, should_stop=should_stop)
    finally:
        callback.close()
