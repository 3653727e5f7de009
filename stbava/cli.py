"""The ``stbava`` command: a thin click layer over library functions (parse -> config -> one call)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import click

from stbava.config import ConfigError
from stbava.data.clips import DataError


def _known_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [DataError, ConfigError]
    with contextlib.suppress(ImportError):
        from stbava.encoders.checkpoints import CheckpointError

        errs.append(CheckpointError)
    with contextlib.suppress(ImportError):
        from stbava.cache.base import CacheError

        errs.append(CacheError)
    return tuple(errs)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Known user-facing errors become a one-line message and exit code 1, without a traceback."""
    try:
        yield
    except _known_errors() as e:  # noqa: BLE001 - a fixed tuple of our own error types
        raise click.ClickException(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="stbava")
def main(verbose: bool) -> None:
    """SAM + ST-BAVA audio-visual segmentation: extract once, train fast, evaluate exactly."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# >>> data commands
# <<< data commands

# >>> extract commands
# <<< extract commands

# >>> train commands
# <<< train commands

# >>> eval commands
# <<< eval commands

# >>> predict commands
# <<< predict commands

# >>> demo commands
# <<< demo commands

_ = Path  # Path is used by the commands added between the markers
