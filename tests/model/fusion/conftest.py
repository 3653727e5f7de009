"""One torch thread per test here: on the shared 2-core machine two OpenMP threads per process were measured
16x slower than one (10 Adam steps of a small fusion module: 7.2 s vs 0.44 s under load); restored after."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
