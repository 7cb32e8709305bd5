"""Multi-process training through ``torchrun`` and torch.distributed.

``torchrun --nproc_per_node N -m unitkit run RECIPE`` starts N processes; each reads its rank from the
environment torchrun sets. ``train.batch_size`` stays the *global* batch: each process takes its own contiguous
slice of every global batch and of every noise draw, so N processes train the same model one process would
(up to the order of floating-point sums), and a run can resume at a different world size.

A process torchrun started joins its process group even alone (``--nproc_per_node 1``), so that one process
takes the same path (DistributedDataParallel, the votes) as each of many; a plain ``unitkit run`` joins none.
"""

from __future__ import annotations

import os
import signal
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
    joined: bool = False  # whether this process joined torchrun's process group (at any world size, 1 too)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, samples and the report; the others only train."""
        return self.rank == 0

    def slice(self, global_size: int) -> slice:
        """This rank's contiguous share of ``global_size`` items."""
        size = global_size // self.world
        return slice(self.rank * size, (self.rank + 1) * size)


def world_size() -> int:
    """How many processes torchrun started for this run (1 without torchrun; usable before ``start``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


#: What torchrun sets in each process's environment for ``init_process_group`` to meet the others; the first is
#: torchrun's own, where the others may come from any cluster's launcher for a plain process.
TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (usable before ``start``), at any world size. A WORLD_SIZE above 1
    alone counts too: ``init_process_group`` then names what else is missing, where the process would otherwise
    train alone."""
    return world_size() > 1 or TORCHRUN_ENV[0] in os.environ


def is_main_process() -> bool:
    """True unless torchrun started this process with a rank other than 0 (usable before ``start``)."""
    return os.environ.get("RANK", "0") == "0"


#: The shard of a run in one process.
SINGLE_PROCESS = Shard()


def start(device: torch.device) -> tuple[Shard, torch.device]:
    """Join the process group torchrun describes (if any); returns this process's shard and device.

    NCCL on CUDA, gloo on CPU. Without torchrun's environment this is a single process and nothing is started.
    """
    if not launched_by_torchrun():
        return SINGLE_PROCESS, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(rank, world_size(), local_rank, joined=True), device


class Votes:
    """Decisions every process of a run must take together, agreed by an all-reduce on the CPU (gloo).

    A signal reaches the processes of a run at different moments (torchrun forwards it one by one, a scheduler may
    preempt one node first), and a NaN may appear in one process's loss only. A process that decided alone would
    leave the others waiting in their next gradient all-reduce until a timeout, and no checkpoint would be
    written. The votes run on a gloo group of their own: NCCL, the default group of a GPU run, cannot reduce CPU
    tensors, and a vote on the CPU does not wait for the device.
    """

    def __init__(self, shard: Shard) -> None:
        self._group = dist.new_group(backend="gloo") if shard.joined else None

    def _reduce(self, value: int, op: dist.ReduceOp) -> int:
        if self._group is None:
            return value
        vote = torch.tensor([value])
        dist.all_reduce(vote, op=op, group=self._group)
        return int(vote)

    def stop(self, received: list[str]) -> str:
        """The signal that stops the run ("SIGINT", "SIGTERM"), received here or by any other process; or ""."""
        signum = self._reduce(signal.Signals[received[0]].value if received else 0, dist.ReduceOp.MAX)
        return signal.Signals(signum).name if signum else ""

    def everywhere(self, holds: bool) -> bool:
        """Whether ``holds`` is true in every process of the run."""
        return bool(self._reduce(int(holds), dist.ReduceOp.MIN))

    def barrier(self) -> None:
        """Wait until every process gets here. Called after the final save: a process that exits early, with
        143 after a signal, makes torchrun terminate the others, rank 0 included, within 30 seconds."""
        if self._group is not None:
            dist.barrier(group=self._group)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
