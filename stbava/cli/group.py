"""The ``stbava`` click group and the one rule for user-facing errors (a message and exit 1, no traceback)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import click


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Known user-facing errors (:data:`stbava.pipeline.core.user_errors.USER_ERRORS`) become a one-line message
    and exit code 1, without a traceback; anything else is a bug and keeps its traceback.

    The error classes are imported when an exception arrives, so a command's start does not pay for torch;
    an ImportError of the package's own modules is not hidden.
    """
    try:
        yield
    except Exception as e:
        from stbava.pipeline.core.user_errors import USER_ERRORS

        if isinstance(e, USER_ERRORS):
            raise click.ClickException(str(e)) from None
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (every command also takes -v / -q).")
@click.version_option(package_name="stbava")
def main(verbose: bool) -> None:
    """SAM + ST-BAVA audio-visual segmentation: extract once, train fast, evaluate exactly.

    Options that several commands take mean the same on each: -v/--verbose and -q/--quiet (that command's
    logging; -q also hides progress bars), --progress/--no-progress (every long-running command), --device,
    --seed, --out (the output folder or file) and --set KEY=VALUE (any config field).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
