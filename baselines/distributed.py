"""Data parallelism with torchrun: which tasks a rank trains on, and the collectives the runner needs.

``torchrun --nproc-per-node N -m baselines.cli train ... --tasks-per-step B`` starts N copies of the
trainer. Every rank holds every agent's policy. A step's B tasks are split into N contiguous blocks, one
per rank. A task's whole rollout tree stays on its rank, so advantages (group-relative, within one node)
need no communication. Each agent's gradient is summed over the ranks (``all_reduce``: gloo on CPU, nccl
on CUDA) before its optimiser steps, so every rank applies the same update and the parameters stay
identical. Rank 0 alone writes files (metrics, evaluations, checkpoints, final weights); the others wait
for it where its work decides what comes next.

Multi-node is the same code: ``torchrun --nnodes M --node-rank i --rdzv-backend c10d --rdzv-endpoint
HOST:PORT ...`` on each node, with the run directory on storage every node can read (resume reads the
checkpoint rank 0 wrote). See docs/scaling.md.

Without torchrun (no ``WORLD_SIZE`` above 1 in the environment) :func:`init_distributed` returns a
single-process context whose collectives do nothing.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["DistContext", "init_distributed", "shard"]

T = TypeVar("T")
TIMEOUT_ENV = "LLM_COOP_DIST_TIMEOUT_S"
"""Seconds a rank waits in a collective (rank 0's evaluations and checkpoints included); default 3 h."""


@dataclass
class DistContext:
    """This process's place in the job (rank ``rank`` of ``world_size``) and the collectives over it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False  # this context initialised the process group (and destroys it in close)

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that writes files and shows the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """The torch device of this rank: ``cuda`` becomes ``cuda:<local rank>`` under torchrun."""
        if self.distributed and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the ranks, in place, as one flat buffer. A parameter that has a
        gradient on some rank gets one on every rank (zeros where it had none); one that has none anywhere
        keeps ``grad = None``, so the optimiser skips it exactly as in one process."""
        if not self.distributed or not params:
            return
        params = list(params)
        device = params[0].device
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(present, op=torch.distributed.ReduceOp.MAX)
        used = [p for p, flag in zip(params, present.tolist(), strict=True) if flag]
        if not used:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in used:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result to every rank; an exception it raises is raised on
        every rank (same type when it can be rebuilt from its message), so no rank waits forever."""
        result: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                result = (True, fn())
            except Exception as error:  # re-raised below, on every rank
                if not self.distributed:
                    raise
                result = (False, error)
        ok, value = self.broadcast(result)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self.started_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str = "cpu") -> DistContext:
    """The context of this process: under torchrun (``WORLD_SIZE`` > 1) it joins the process group, with
    nccl when ``device`` is CUDA and gloo otherwise; else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.distributed.is_initialized():
        return DistContext(rank, world, local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 3 * 3600)))
    torch.distributed.init_process_group(backend=backend, timeout=timeout)
    return DistContext(rank, world, local_rank, started_here=True)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous block of ``items`` (whose length ``world_size`` divides)."""
    if len(items) % world_size:
        raise ValueError(f"{len(items)} items do not split evenly over {world_size} ranks")
    size = len(items) // world_size
    return list(items[rank * size : (rank + 1) * size])
