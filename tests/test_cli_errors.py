"""The CLI's one rule for errors: a user-facing error is one line and exit 1; anything else keeps its traceback."""

from __future__ import annotations

import sys

import click
import pytest

from stbava.cache import CacheError
from stbava.checkpoint import CheckpointFormatError
from stbava.cli.group import cli_errors
from stbava.config import ConfigError
from stbava.data.clips import DataError
from stbava.state_dict import CheckpointError


@pytest.mark.parametrize("error", [DataError, ConfigError, CheckpointError, CheckpointFormatError, CacheError])
def test_user_facing_errors_become_a_message(error):
    with pytest.raises(click.ClickException, match="cache.zarr: rebuild it") as info, cli_errors():
        raise error("cache.zarr: rebuild it")
    assert info.value.exit_code == 1


def test_a_bug_keeps_its_type_and_traceback():
    with pytest.raises(ZeroDivisionError), cli_errors():
        raise ZeroDivisionError("a bug")


def test_a_broken_import_of_the_package_is_not_swallowed(monkeypatch):
    """cli_errors suppressed ImportError of the package's own modules: with the cache module broken, a
    CacheError came out as a bare traceback with no hint why (fails on that code)."""
    monkeypatch.delitem(sys.modules, "stbava.pipeline.core.user_errors", raising=False)
    monkeypatch.setitem(sys.modules, "stbava.cache.manifest", None)  # `import` of it now raises ImportError
    with pytest.raises(ImportError, match="stbava.cache.manifest"), cli_errors():
        raise CacheError("cache.zarr: rebuild it")
