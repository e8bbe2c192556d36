"""Where a process stands in a torchrun job, and the DistributedDataParallel wrapper.

Without torchrun (no WORLD_SIZE, or 1) every function here is a no-op for a single process, so
the trainer never branches on "distributed or not" beyond asking :class:`DistInfo`.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class DistInfo:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialized:
            torch_dist.barrier()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, LOCAL_RANK).

    NCCL when CUDA is used, gloo otherwise (CPU). Without torchrun: a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, True)


def cleanup_distributed(info: DistInfo, ok: bool = True) -> None:
    """Tear the process group down together.

    A rank that destroys gloo's group while another still talks to it can abort ("terminate
    called without an active exception"). After a failure (``ok`` False) the other ranks may
    never arrive, so no barrier then.
    """
    if info.initialized and torch_dist.is_initialized():
        if ok:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Wrap ``module`` in DistributedDataParallel when the job has several processes.

    Otherwise it is returned as is.

    Parameters and buffers are broadcast from rank 0 at construction; buffers (permutations,
    ActNorm flags) never change after that, so they are not synchronised every step.
    """
    if not info.initialized:
        return module
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    kw = ({"forward_sync_buffers": False}
          if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
          else {"broadcast_buffers": False})
    return ddp(module, device_ids=ids, **kw)


def all_equal(info: DistInfo, value: str) -> list[str]:
    """``value`` of every rank (gathered), for checks that ranks stayed in sync."""
    if not info.initialized:
        return [value]
    values = [None] * info.world
    torch_dist.all_gather_object(values, value)
    return values


__all__ = ["DistInfo", "all_equal", "cleanup_distributed", "setup_distributed", "wrap_ddp"]
