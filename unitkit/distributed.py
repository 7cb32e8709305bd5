"""Multi-process training through ``torchrun`` and torch.distributed.

``torchrun --nproc_per_node N -m unitkit run RECIPE`` starts N processes; each reads its rank from the
environment torchrun sets. ``train.batch_size`` stays the *global* batch: each process takes its own contiguous
slice of every global batch and of every noise draw, so N processes train the same model one process would
(up to the order of floating-point sums), and a run can resume at a different world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from unitkit.errors import TrainingError


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, samples and the report; the others only train."""
        return self.rank == 0

    def slice(self, global_size: int) -> slice:
        """This rank's contiguous share of ``global_size`` items."""
        size = global_size // self.world
        return slice(self.rank * size, (self.rank + 1) * size)


def is_main_process() -> bool:
    """True unless torchrun started this process with a rank other than 0 (usable before ``start``)."""
    return os.environ.get("RANK", "0") == "0"


#: The shard of a run in one process.
SINGLE_PROCESS = Shard()


def start(device: torch.device) -> tuple[Shard, torch.device]:
    """Join the process group torchrun describes (if any); returns this process's shard and device.

    NCCL on CUDA, gloo on CPU. Without torchrun's environment this is a single process and nothing is started.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(rank, world, local_rank), device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
