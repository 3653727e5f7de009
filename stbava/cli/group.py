"""The ``stbava`` click group and the one rule for user-facing errors (a message and exit 1, no traceback)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import click

from stbava.config import ConfigError
from stbava.data.clips import DataError


def _known_errors() -> tuple[type[BaseException], ...]:
    from stbava.checkpoint import CheckpointFormatError

    errs: list[type[BaseException]] = [DataError, ConfigError, CheckpointFormatError]
    with contextlib.suppress(ImportError):
        from stbava.state_dict import CheckpointError

        errs.append(CheckpointError)
    with contextlib.suppress(ImportError):
        from stbava.cache import CacheError

        errs.append(CacheError)
    return tuple(errs)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Known user-facing errors become a one-line message and exit code 1, without a traceback."""
    try:
        yield
    except _known_errors() as e:
        raise click.ClickException(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="stbava")
def main(verbose: bool) -> None:
    """SAM + ST-BAVA audio-visual segmentation: extract once, train fast, evaluate exactly."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
