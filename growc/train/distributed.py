"""The ranks of a ``growc train`` under ``torchrun``: the process group, and what the loop asks of it.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) the train layer joins a process group (gloo on CPU,
nccl on GPU, one GPU per rank); otherwise it runs as the one rank of a world of one, and every collective below is
a no-op. Owns: :func:`setup_distributed` and :class:`Distributed` (rank, world size, device; barriers, sums,
buffer broadcasts, gathering, wrapping a model in DistributedDataParallel, leaving the group).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Distributed", "setup_distributed"]


@dataclass
class Distributed:
    """This process's place among the ranks (a world of one without ``torchrun``)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started: bool = False  # whether this object started the process group (then :meth:`close` destroys it)

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that shows progress and writes outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier()

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics): DDP broadcasts them at the start of each forward,
        so after an epoch's last step each rank still holds the statistics of its own last shard."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def sum(self, *values: float) -> list[float]:
        """Each of ``values`` summed over the ranks (in float64)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, by rank (picklable objects)."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when there are several ranks; else ``model`` itself."""
        if self.world == 1:
            return model
        device = self.device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def close(self) -> None:
        """Leave the process group if this object started it."""
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed() -> Distributed:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``LOCAL_RANK``), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if dist.is_initialized():
        started = False
    else:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), dist.get_world_size(), device, started)
