"""The options many commands share, each defined once: the same name, type, default and help everywhere.

``-v/--verbose``, ``-q/--quiet`` (the log level of one command), ``--progress/--no-progress`` (tqdm bars),
``--device``, ``--seed``, ``--out`` (an output folder or an output file, with an optional hidden old name)
and ``--set KEY=VALUE``. ``tests/test_cli_style.py`` walks every command and checks they stay alike.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import click

F = Callable[..., Any]

VERBOSE_HELP = "Debug logging for this command."
QUIET_HELP = "Warnings and errors only, and no progress bars."
PROGRESS_HELP = "tqdm progress bars on stderr."
DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: this process's GPU when there is one, else the CPU)."
SEED_HELP = ("Seed of the command's random draws (random-init encoders, synthetic data, prompt points, training "
             "order); default: 0, for training the config's train.seed.")
SET_HELP = "Any config field, e.g. --set train.amp=off (repeatable; the value is read as YAML)."
OUT_DIR_HELP = "Output folder: "
OUT_FILE_HELP = "Output file: "


@contextlib.contextmanager
def log_level(level: int | None) -> Iterator[None]:
    """The root logger at ``level`` (None: unchanged) while the block runs, then as it was."""
    root = logging.getLogger()
    before = root.level
    if level is not None:
        root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def _quiet() -> bool:
    """Whether the running command was given ``-q`` (click fills ``ctx.params`` before calling back)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("quiet"))


def verbosity_options(f: F) -> F:
    """``-v/--verbose`` (DEBUG) and ``-q/--quiet`` (WARNING, no bars); they exclude each other.

    The level holds for the command only and is restored after it (the group's ``stbava -v`` still works).
    """

    @functools.wraps(f)
    def wrapper(*args: Any, verbose: bool = False, quiet: bool = False, **kwargs: Any) -> Any:
        if verbose and quiet:
            raise click.UsageError("-v/--verbose and -q/--quiet exclude each other; give one")
        with log_level(logging.DEBUG if verbose else logging.WARNING if quiet else None):
            return f(*args, **kwargs)

    wrapper = click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)(wrapper)
    return click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)(wrapper)


def progress_option(f: F) -> F:
    """``--progress/--no-progress`` (default on) -> the command's ``progress`` argument; ``-q`` turns it off."""

    @functools.wraps(f)
    def wrapper(*args: Any, progress: bool = True, **kwargs: Any) -> Any:
        return f(*args, progress=progress and not _quiet(), **kwargs)

    return click.option("--progress/--no-progress", default=True, show_default=True, help=PROGRESS_HELP)(wrapper)


def device_option(f: F) -> F:
    """``--device`` (default auto), resolved by :func:`stbava.device.resolve_device`."""
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(f)


def seed_option(f: F) -> F:
    """``--seed`` (int, default None: the command's own default, 0 or the config's ``train.seed``)."""
    return click.option("--seed", type=int, default=None, help=SEED_HELP)(f)


def _set_callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    from stbava.config import ConfigError, deep_update, parse_override

    out: dict[str, Any] = {}
    for text in values:
        try:
            deep_update(out, parse_override(text))
        except ConfigError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return out


def set_option(f: F) -> F:
    """``--set KEY=VALUE`` (repeatable) -> ``sets``: the nested overrides, later ones winning."""
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", callback=_set_callback,
                        help=SET_HELP)(f)


def _out_option(kind: str, what: str, *, required: bool, default: str | None, alias: str | None,
                dest: str) -> Callable[[F], F]:
    """``--out`` of one ``kind`` ('dir' or 'file'), into argument ``dest``; ``alias``: a hidden old name."""
    path = click.Path(file_okay=False) if kind == "dir" else click.Path(dir_okay=False)
    help_ = (OUT_DIR_HELP if kind == "dir" else OUT_FILE_HELP) + what + ("  [required]" if required and alias
                                                                         else "")

    def deco(f: F) -> F:
        if alias is None:
            return click.option("--out", dest, type=path, required=required, default=default,
                                show_default=default is not None, help=help_)(f)
        old = alias.lstrip("-").replace("-", "_") + "_alias"

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            new, given = kwargs.get(dest), kwargs.pop(old, None)
            if new is not None and given is not None and new != given:
                raise click.UsageError(f"--out and {alias} (its old name) name different paths; give one")
            kwargs[dest] = new if new is not None else given if given is not None else default
            if required and kwargs[dest] is None:
                raise click.UsageError("Missing option '--out'.")
            return f(*args, **kwargs)

        wrapper = click.option(alias, old, type=path, default=None, hidden=True)(wrapper)
        return click.option("--out", dest, type=path, default=None, help=help_)(wrapper)

    return deco


def out_dir_option(what: str, *, required: bool = True, default: str | None = None, alias: str | None = None,
                   dest: str = "out") -> Callable[[F], F]:
    """``--out`` naming a folder the command writes into; ``what`` says what goes there."""
    return _out_option("dir", what, required=required, default=default, alias=alias, dest=dest)


def out_file_option(what: str, *, required: bool = True, dest: str = "out") -> Callable[[F], F]:
    """``--out`` naming one file the command writes; ``what`` says what the file is."""
    return _out_option("file", what, required=required, default=None, alias=None, dest=dest)
