"""One torch thread per module here (the shared ``one_torch_thread`` fixture of tests/conftest.py): on the shared
2-core machine two OpenMP threads per process were measured 16x slower than one (10 Adam steps of a small fusion
module: 7.2 s vs 0.44 s under load); restored after."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield
