"""Pipeline fixtures: ``ckpt``, a tiny freshly built stage-two checkpoint (see predict_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from predict_helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")
