"""The ``stbava`` command: a thin click layer over library functions (parse -> config -> one call).

One file per group of commands; importing this package registers them all on :data:`main`.
"""

from stbava.cli import app, data, demo, evaluate, experiment, extract, plot, predict, train, zero_shot  # noqa: F401 (registers the commands)
from stbava.cli.group import cli_errors, main

__all__ = ["cli_errors", "main"]
