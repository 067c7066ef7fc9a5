"""What every textrnn command shares: one-line errors, --config files, number formatting, threads."""

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
    unknown = sorted(set(settings) - known)
    if unknown:
        raise click.BadParameter(f"{path} sets unknown options {unknown}", param_hint="--config")
    context.default_map = {**(context.default_map or {}), **settings}
    return str(path)


def resumed_config(stored, options: dict):
    """The config of a resumed run: the stored one, with the limits given now (any limit replaces all three)
    and the ``RESUMABLE`` settings given now; other options are ignored, with a warning."""
    from textrnn.config import LIMITS, RESUMABLE, with_limits

    ignored = sorted(
        name for name, value in options.items() if value not in (None, ()) and name not in (*LIMITS, *RESUMABLE)
    )
    if ignored:
        names = ", ".join("--" + name.replace("_", "-") for name in ignored)
        click.echo(f"warning: --resume continues the stored run; ignoring {names}", err=True)
    config = dataclasses.replace(stored, **given({name: options.get(name) for name in RESUMABLE}, type(stored)))
    return with_limits(config, **{name: options.get(name) for name in LIMITS})


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


def defaulted_option(defaults: dict, *names, default_text: str | None = None, **kwargs):
    """A click option whose value stays None unless given, so the config dataclass's default (from
    ``defaults``) decides; the help shows that default."""
    name = names[0].split("/")[0].lstrip("-").replace("-", "_")
    if default_text is None:
        value = defaults.get(name)
        default_text = None if value in (None, ()) else str(value).lower() if isinstance(value, bool) else str(value)
    help_text = kwargs.pop("help", "")
    if default_text is not None:
        help_text = f"{help_text}  [default: {default_text}]".strip()
    return click.option(*names, help=help_text, **kwargs)


def dataclass_defaults(*classes) -> dict:
    """Field name -> default, the first class winning where names repeat."""
    defaults = {}
    for cls in reversed(classes):
        defaults.update({field.name: field.default for field in dataclasses.fields(cls)})
    return defaults


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


def run_with_progress(train, printer, tensorboard=None, **arguments) -> dict:
    """Run a library training function (``lm.task.train``, ``forecast.task.train_forecaster``) with ``printer``
    (and TensorBoard logs in the directory ``tensorboard``, if given) on its events. Ctrl-C / SIGTERM stop it
    after the current step with a checkpoint."""
    callback = printer
    if tensorboard is not None and os.environ.get("RANK", "0") == "0":  # under torchrun the first process logs
        from textrnn.train.tensorboard import TensorBoardLogger, tee

        callback = tee(printer, TensorBoardLogger(tensorboard))
    try:
        with stop_on_signals() as should_stop:
            return train(**arguments, callback=callback, should_stop=should_stop)
    finally:
        callback.close()


class ProgressPrinter:
    """Trainer events -> some lines at the start, a tqdm bar over the run's budget and one line per
    validation, all on stderr. Subclasses say what the lines hold (``start_lines``, ``log_text``, ``eval_line``)."""

    def __init__(self):
        self.bar = None

    def start_lines(self, info: dict) -> list[str]:
        raise NotImplementedError

    def log_text(self, info: dict) -> str:
        raise NotImplementedError

    def eval_line(self, info: dict) -> str:
        raise NotImplementedError

    def __call__(self, event: str, info: dict) -> None:
        from tqdm import tqdm

        if event == "start":
            for line in self.start_lines(info):
                tqdm.write(line, file=sys.stderr)
            self.bar = tqdm(
                total=1000,
                unit="",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
                disable=None,  # no bar when stderr is not a terminal (logs, CI): the validation lines remain
                bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
            )
        elif event == "step" and self.bar is not None:
            target = min(1000, int(info["progress"] * 1000))
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)
        elif event == "log" and self.bar is not None:
            self.bar.set_postfix_str(self.log_text(info), refresh=False)
        elif event == "eval":
            tqdm.write(self.eval_line(info), file=sys.stderr)
        elif event == "note":
            tqdm.write(info["message"], file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
