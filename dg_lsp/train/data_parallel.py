"""Data-parallel training across processes on one machine (``--procs N``): one process per core.

Each process trains on its own example stream and the gradients are averaged with one
``all_reduce`` of a flattened buffer per step (gloo on CPU, NCCL on CUDA), so every process
takes the same optimizer step and holds the same weights. One process per core, one thread
each, pinned: on a 2-core CPU a single process with two threads scaled poorly (the small
model's ops are too small to split), while two single-threaded processes each run at
one-thread speed. Only rank 0 evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def free_port() -> int:
    """A TCP port on localhost that is free now (for the process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Group:
    """This process's place in the data-parallel group (``world == 1``: a single process, every call a no-op)."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    @property
    def leader(self) -> bool:
        """Whether this process evaluates, logs and saves."""
        return self.rank == 0

    def broadcast_parameters(self, parameters: Iterable[torch.Tensor]) -> None:
        """Give every process rank 0's values (the same start, whatever each one loaded)."""
        if self.world == 1:
            return
        tensors = [p.data for p in parameters]
        flat = _flatten(tensors)
        dist.broadcast(flat, src=0)
        for tensor, value in zip(tensors, _unflatten(flat, tensors), strict=True):
            tensor.copy_(value)

    def average_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Replace each gradient by its mean over the processes (one all_reduce; missing gradients count as zero)."""
        if self.world == 1:
            return
        params = list(parameters)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = _flatten(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for param, value in zip(params, _unflatten(flat, grads), strict=True):
            if param.grad is None:
                param.grad = value.clone()
            else:
                param.grad.copy_(value)

    def same_everywhere(self, parameters: Iterable[torch.Tensor]) -> bool:
        """Whether every process holds the same weights (a checksum's max and min over the processes agree)."""
        if self.world == 1:
            return True
        flat = _flatten([p.detach().double() for p in parameters])
        checksum = torch.stack([flat.sum(), (flat * flat).sum(), (flat * torch.arange(flat.numel(), dtype=flat.dtype)).sum()])
        high, low = checksum.clone(), checksum.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        return bool(torch.equal(high, low))

    def stop_and_tokens(self, stop: bool, tokens: int) -> tuple[bool, int]:
        """(any process wants to stop, tokens summed over the processes): keeps every process at the same step."""
        if self.world == 1:
            return stop, tokens
        values = torch.tensor([float(stop), float(tokens)], dtype=torch.float64)
        dist.all_reduce(values)
        return bool(values[0].item() > 0), int(values[1].item())


def _worker(rank: int, world: int, port: int, pin: bool, fn: Callable[[Group], Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if sys.platform.startswith("linux"):  # one machine: gloo over loopback, whatever the hostname resolves to
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if pin and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[rank % len(cores)]})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(Group(rank, world))
    finally:
        dist.destroy_process_group()


def run(world: int, fn: Callable[[Group], Any], pin: bool = True) -> None:
    """Run ``fn(group)`` in ``world`` processes (just here when ``world == 1``); raises if any process failed."""
    if world == 1:
        fn(Group())
        return
    import torch.multiprocessing as mp

    pin = pin and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= world
    mp.spawn(_worker, args=(world, free_port(), pin, fn), nprocs=world, join=True)  # type: ignore[attr-defined,no-untyped-call]
