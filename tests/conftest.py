"""Shared test settings: deterministic torch threads so CI on 2 cores is not oversubscribed, and the order in
which pytest-xdist hands out the test files.

Run alone, a test process uses both cores (2 torch threads); under pytest-xdist (``make test`` runs 2 workers,
one file at a time each) a worker takes one core, so it uses one thread.
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# The longest files (measured with --durations), handed out first so that the two workers finish together
# instead of one starting the longest file last.
LONGEST_FIRST = ("pipeline/test_distributed.py", "reliability/test_interruptions.py", "pipeline/test_learns_audio.py",
                 "pipeline/test_experiment.py", "reliability/test_bad_input.py", "reliability/test_concurrency.py",
                 "pipeline/test_demo.py", "pipeline/test_provenance.py", "pipeline/test_real_workflow.py",
                 "pipeline/test_train_loop.py")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a whole module (restored after): for modules of many tiny forwards and
    steps, where on the shared 2-core machine a second OpenMP thread mostly spins (10 Adam steps of a small
    fusion module measured 16x slower with 2 threads under load). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` or from an autouse fixture of a conftest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order inside a file and among the other files is kept
