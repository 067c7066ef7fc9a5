"""The ``textrnn`` command: thin click commands that parse options, build configs, call the library and print.

Bad input raises ``TextrnnError`` in the library; here it becomes one line on stderr and exit status 1
(``--debug`` shows the traceback instead). One module per command group: ``lm`` (train, compare, sample,
eval, fill, prepare), ``serve``, ``forecast`` and ``tools`` (bench, plot, export).
"""

from __future__ import annotations

import click

from textrnn.cli import lm, panel, serve, tools
from textrnn.cli.forecast import forecast


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="textrnn")
def cli() -> None:
    """Recurrent sequence models: character language models (train, sample, eval, fill, compare) and forecasting."""


for command in (
    lm.train,
    lm.compare,
    lm.sample,
    lm.evaluate,
    lm.fill,
    lm.prepare,
    serve.serve,
    tools.bench,
    tools.plot,
):
    cli.add_command(command)
cli.add_command(tools.export)
forecast.add_command(panel.m4_command)
cli.add_command(forecast)


def main() -> None:
    cli(prog_name="textrnn")
