"""Processes and devices: one process, or one per device under `torchrun` (NCCL on GPUs, gloo on
CPUs). Everything else in training talks to the other ranks through this module. Rank 0 works
alone at times (checkpoints, sampled generations); the others then wait at one of the
collectives here, which raise CollectiveError after the process group's timeout.

Parameters are replicated on every rank (DDP) or sharded over the ranks (FSDP2, `shard`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from hslm.config import ConfigError


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """`auto` means CUDA when present, otherwise CPU; each rank takes its own local GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but PyTorch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device(device)


def setup(device: str, timeout_seconds: int = 300, parallel: str = "ddp") -> World:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), or alone when
    parallel=fsdp (FSDP2 shards over a process group, here of one). A collective that
    waits longer than `timeout_seconds` for another rank (one that died or hangs) raises, so
    the run stops instead of hanging; it must exceed rank 0's slowest checkpoint write and
    evaluation, which the others wait for."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if (world_size > 1 or parallel == "fsdp") and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        alone = {"store": dist.HashStore(), "rank": 0, "world_size": 1} if world_size == 1 else {}
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_seconds),
                                device_id=resolved if resolved.type == "cuda" else None, **alone)
    return World(rank, world_size, local_rank, resolved)


class CollectiveError(RuntimeError):
    """Another rank did not take part in a collective: it died, or hung past the timeout."""


def _collective(run):
    """Run a collective; gloo and NCCL report a missing rank as a RuntimeError (or DistError)."""
    try:
        return run()
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise CollectiveError(lines[0][:300] if lines else type(err).__name__) from None


def teardown(world: World) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(root: nn.Module, blocks: Iterable[nn.Module], world: World,
          param_dtype: torch.dtype | None) -> None:
    """FSDP2: each block's parameters, gradients and optimizer state split over the ranks and
    gathered for the block's forward and backward; the root group holds the rest (embedding,
    final norm). With `param_dtype` (bf16) the gathered parameters are cast to it and
    gradients are reduced in fp32; the shards (the master weights) stay fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device.type, (world.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) \
        if param_dtype is not None else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)


@contextmanager
def root_gathered(root: nn.Module):
    """The FSDP root group's parameters gathered, for code that calls the model's parts (not
    the root's forward), as evaluation does; the blocks gather themselves. A no-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(root, FSDPModule):
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def all_reduce_sum(world: World, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (identity in one process)."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)
    _collective(lambda: dist.all_reduce(tensor))
    return tensor.tolist()


def all_gather(world: World, value) -> list:
    """Every rank's `value` (any picklable object), in rank order."""
    if not world.distributed:
        return [value]
    gathered = [None] * world.world_size
    _collective(lambda: dist.all_gather_object(gathered, value))
    return gathered
