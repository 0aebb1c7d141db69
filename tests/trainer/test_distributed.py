"""A rank alone needs no process group: the model runs unwrapped, sums stay local."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trainer.distributed import all_reduce_sum, pick_device, process_group, wrap_model


def test_named_device_wins_and_cpu_is_the_fallback(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == torch.device("cpu")


def test_gpu_rank_takes_its_local_rank_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device(None) == torch.device("cuda", 3)


def test_world_of_one_joins_no_group_and_wraps_nothing():
    model = nn.Linear(2, 2)
    with process_group(0, 1, torch.device("cpu")):
        assert not dist.is_initialized()
        assert wrap_model(model, torch.device("cpu"), compile_model=False) is model
        totals = torch.tensor([1.0, 2.0], dtype=torch.float64)
        assert torch.equal(all_reduce_sum(totals, torch.device("cpu")), totals)
