"""Distributed fitting under torchrun: detecting it, the process group, small collectives.

torchrun starts one process per GPU (or several CPU processes) on every node and tells each
its place through RANK, WORLD_SIZE and LOCAL_RANK. Fitting then uses DistributedDataParallel:
NCCL between GPUs, gloo on the CPU and on Windows. Only rank 0 writes files; every
collective here is called by all ranks in the same order.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read torchrun's environment variables."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(info: DistInfo, cuda: bool) -> None:
    """Join the job's process group (NCCL for CUDA on Linux, gloo otherwise)."""
    import torch.distributed as dist

    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if cuda and sys.platform.startswith("linux") else "gloo"
    dist.init_process_group(backend=backend)


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    import torch.distributed as dist

    if _active():
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank (picklable objects)."""
    import torch.distributed as dist

    if not info.enabled or not _active():
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64)."""
    import torch
    import torch.distributed as dist

    if not _active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, device) -> bool:
    """True on every rank when any rank passes True (used to stop all ranks at one step)."""
    import torch
    import torch.distributed as dist

    if not _active():
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def max_over_ranks(value: int, device) -> int:
    import torch
    import torch.distributed as dist

    if not _active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())
