"""Shared test settings: deterministic, 2-thread torch so CI on 2 cores is not oversubscribed."""

import torch

torch.set_num_threads(2)
