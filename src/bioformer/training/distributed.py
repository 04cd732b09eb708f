"""Several processes, one model: PyTorch DDP as launched by `torchrun` (gloo on CPU, NCCL on GPU).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; `setup` joins the process group from
them (a plain `python` run has none and stays single-process: every helper here is then a
no-op). Batches are formed globally (one length-grouped, seeded, epoch-dependent order shared by
all ranks) and each global batch is cut into one contiguous shard per rank, so N processes with
per-rank batch b see exactly the batches of one process with batch N * b.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

_DEVICE = torch.device("cpu")  # where collectives put their tensors (cuda for NCCL)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def setup(device_name: str) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes, if any. Returns (this rank's device, whether
    this call started the group, so the caller tears it down)."""
    global _DEVICE
    if device_name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_name)
    if env_world_size() <= 1 or is_distributed():
        if is_distributed() and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            _DEVICE = device
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    _DEVICE = device
    return device, True


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (a copy; `t` itself unchanged). Identity in one process."""
    if not is_distributed():
        return t
    out = t.detach().to(_DEVICE, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(batch: Sequence[int], rank_: int, world: int) -> tuple[list[int], float]:
    """This rank's contiguous part of a global batch, and its loss weight.

    A global batch smaller than the number of ranks leaves some ranks without cells; they run
    the batch's first cell with weight 0 (every rank must run forward and backward each step).
    """
    n = len(batch)
    lo, hi = rank_ * n // world, (rank_ + 1) * n // world
    if hi > lo:
        return list(batch[lo:hi]), 1.0
    return [batch[0]], 0.0


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around `model` in a process group; the model itself otherwise. No
    find_unused_parameters: every model switch uses all of its parameters (tested)."""
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
