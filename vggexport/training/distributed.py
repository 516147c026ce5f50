"""Data-parallel training on PyTorch's own runtime: torchrun + DistributedDataParallel.

NCCL on CUDA, gloo on CPU. ``--batch-size`` is the global batch: each of the N
processes takes every N-th sample of each global batch, so N processes see the
same samples per step as one process would, and DDP's gradient averaging gives
the same update (up to batch-norm statistics, which are per process).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vggexport.errors import VggExportError
from vggexport.hardware import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        return index[self.rank :: self.world_size]

    def all_reduce(self, *tensors: torch.Tensor) -> None:
        if self.enabled:
            for tensor in tensors:
                dist.all_reduce(tensor)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup(device_spec: str) -> DistContext:
    """One process (no torchrun) or the rank torchrun's environment describes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(device=resolve_device(device_spec))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, device=device)


@contextlib.contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the body (reading, downloading) while the others wait; then they run it, from the
    files rank 0 left, so N processes never download the same dataset at once."""
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if ctx.enabled and ctx.is_main:
            dist.barrier()


def broadcast_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's buffers (batch-norm running statistics) everywhere: every rank then evaluates the model
    rank 0 saves, and a sharded evaluation scores one model, not N."""
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def rank0_value(value: int, ctx: DistContext, device: torch.device) -> int:
    """Rank 0's number on every rank: choices that change how many steps run must agree, or DDP hangs."""
    if not ctx.enabled:
        return value
    chosen = torch.tensor(value, device=device)
    dist.broadcast(chosen, src=0)
    return int(chosen.item())


def rank0_decides(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's yes or no on every rank."""
    return bool(rank0_value(int(flag), ctx, device))


def parameters_identical(model: torch.nn.Module, ctx: DistContext) -> bool:
    """Whether every rank holds bit-identical parameters (they must, after DDP steps)."""
    if not ctx.enabled:
        return True
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    local = torch.stack([flat.sum(), (flat * torch.arange(1, len(flat) + 1, device=flat.device)).sum()])
    gathered = [torch.zeros_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def teardown(ctx: DistContext) -> None:
    """Leave together: a rank that tears down while another still talks to it can abort at exit."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """``vggexport train --nproc N``: re-run this command under torchrun on this machine."""
    if nproc < 1:
        raise VggExportError("--nproc must be >= 1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "vggexport", *argv]
    return subprocess.call(command)
