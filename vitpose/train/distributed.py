"""Scale-out on torch.distributed: ``torchrun --nproc-per-node N -m vitpose train ...``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; the process group is NCCL on GPUs and gloo on CPUs.
The model is wrapped in DistributedDataParallel; every rank reads its share of each global batch
(``ShardedBatches``); evaluation shards the images and gathers the results; rank 0 writes files.

FSDP (torch.distributed.fsdp.fully_shard) for ViTPose-H/G is not implemented: ``wrap`` is the one
place it goes (shard each block, then the root), with checkpoints then written through
torch.distributed.checkpoint instead of rank 0's full state dict.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device=None) -> DistContext:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        here = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world, local, device, here)


def teardown(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext, find_unused: bool = False) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on one (e.g. a SIGTERM that reached one process)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class ShardedBatches(torch.utils.data.Sampler):
    """Batches of (epoch, index) for one rank, resumable mid-epoch.

    The epoch's order is one permutation seeded by (seed, epoch), cut into global batches of
    ``batch_size * world_size``; rank r takes every world_size-th sample of each. So the global
    batch of a step is the same set of samples whatever the number of processes, and a restart
    at step k yields exactly the batches that remained. The last incomplete global batch of an
    epoch is dropped (fewer than one batch of samples; the next epoch's order differs).
    """

    def __init__(self, num_samples: int, batch_size: int, ctx: DistContext, seed: int = 0, shuffle: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.ctx, self.seed, self.shuffle = num_samples, batch_size, ctx, seed, shuffle
        self.global_batch = batch_size * ctx.world_size
        if num_samples < self.global_batch:
            raise ValueError(f"the training set has {num_samples} samples, fewer than one global batch "
                             f"({batch_size} x {ctx.world_size} processes)")
        self.epoch, self.start = 0, 0

    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __len__(self):
        return self.steps_per_epoch() - self.start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for step in range(self.start, self.steps_per_epoch()):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch]
            yield [(self.epoch, i) for i in chunk[self.ctx.rank::self.ctx.world_size]]
