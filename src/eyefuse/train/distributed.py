"""torchrun / DDP support: process-group set-up from the environment torchrun provides, and the
gathering that lets validation metrics be computed on the full set exactly once.

Single-process runs need none of it: every helper here is a no-op when WORLD_SIZE is unset or 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Initialise the default process group when launched by torchrun (RANK/WORLD_SIZE set).

    NCCL on CUDA, gloo on CPU. Returns rank information; a plain run gets rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """This rank's share of `n` evaluation samples: strided, no padding, so that gathering the
    shards gives every sample exactly once (DistributedSampler pads with duplicates instead)."""
    return list(range(info.rank, n, info.world_size))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """All ranks' `obj`, in rank order (just `[obj]` without distribution)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a scalar across ranks."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def all_reduce_max_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In place: the element-wise maximum of `tensor` over ranks (on the device the backend uses)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's floating-point buffers (BatchNorm running mean and variance) on every rank.

    DDP keeps parameters identical, and broadcasts buffers only at the start of each forward: after
    an epoch each rank holds running statistics of its own last batches. Broadcasting them before
    validation makes every rank validate (and save) with one set."""
    if not info.enabled:
        return
    with torch.no_grad():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
