"""What every textrnn command shares: one-line errors, --config files, number formatting, threads."""

from __future__ import annotations

import dataclasses
import functools
import math
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


def given(values: dict, cls) -> dict:
    names = {field.name for field in dataclasses.fields(cls)}
    return {key: item for key, item in values.items() if key in names and item is not None}


def number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if not 1 <= threads <= 1024:
        raise TextrnnError(f"--threads must be in [1, 1024], got {threads}")
    import torch

    torch.set_num_threads(threads)
