"""Multi-process training with DistributedDataParallel, started by ``torchrun``.

``torchrun --nproc-per-node N -m covidseg train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; each process then trains on its shard of Train (a ``DistributedSampler``),
gradients are averaged by DDP, validation is split between the processes and its per-image
counts are gathered, so every process computes the same metrics; only rank 0 writes files.
The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

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


def init_distributed(device_name: str) -> tuple[DistInfo, str]:
    """Join the process group when started by torchrun; returns the info and the device to use."""
    if not started_by_torchrun():
        return DistInfo(), device_name
    world = int(os.environ["WORLD_SIZE"])
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device_name = f"cuda:{local}"
    return DistInfo(rank, world, local), device_name


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather(info: DistInfo, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def started_by_torchrun() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_worker(code: int) -> NoReturn:
    """End a torchrun worker process once its work is written, skipping interpreter shutdown.

    With PyTorch 2.14, a gloo process group that DistributedDataParallel has used keeps its
    worker threads after ``destroy_process_group`` (they are stopped only by the group's
    destructor, which never runs). The interpreter's normal shutdown with those threads alive
    aborted a process now and then ("terminate called without an active exception"; 2 of about
    160 two-process runs on 2 cores), failing a run whose files were complete. Logs and standard
    streams are flushed first, so nothing written is lost.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
