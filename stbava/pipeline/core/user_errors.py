"""The package's user-facing errors: bad input a user can fix (a message naming the file and the fix).

Anything else that escapes a command is a bug. The CLI turns these into a one-line message and exit 1
(``stbava.cli.group.cli_errors``); ``stbava experiment`` marks a run that raises one as refused, not failed.
"""

from __future__ import annotations

from stbava.cache.manifest import CacheError
from stbava.config import ConfigError
from stbava.data.clips import DataError
from stbava.state_dict import CheckpointError

USER_ERRORS: tuple[type[Exception], ...] = (DataError, ConfigError, CheckpointError, CacheError)
