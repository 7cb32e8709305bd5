"""Feeding a run: an endless, resumable stream of batches from each domain, and the fixed sample images."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from unitkit.components import DomainData
from unitkit.distributed import SINGLE_PROCESS, Shard
from unitkit.errors import DataError
from unitkit.recipe import Recipe
from unitkit.registry import Registries


def seeded_generator(seed: int, offset: int) -> torch.Generator:
    """A private CPU generator for stream ``offset`` (an epoch, a start step) of a run seeded with ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + offset)


@contextmanager
def cpu_seeded(seed: int) -> Iterator[None]:
    """Inside this block the CPU's global RNG is seeded with ``seed``; outside, every RNG is as it was.

    The CPU's alone: ``torch.manual_seed`` would also reseed the GPUs, tying training noise there to the data.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class ResumableBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Endless batches of (index, item seed) pairs: a fresh permutation per epoch, fixed by (seed, epoch), and a
    seed for each place in it that the item's random transforms draw from (see ``SeededItems``).

    Because both are functions of the run's seed alone, a run resumed at iteration ``start`` draws exactly the
    batches and augmentations the uninterrupted run would have drawn, without storing sampler state, whatever
    the number of processes or data-loading workers.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0, shard: Shard = SINGLE_PROCESS) -> None:
        if size == 0:
            raise ValueError("the dataset is empty")
        self.size, self.batch_size, self.seed, self.start, self.shard = size, batch_size, seed, start, shard

    def _epoch(self, epoch: int) -> list[tuple[int, int]]:
        generator = seeded_generator(self.seed, epoch)
        order = torch.randperm(self.size, generator=generator)
        seeds = torch.randint(2**62, (self.size,), generator=generator)
        return list(zip(order.tolist(), seeds.tolist(), strict=True))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start * self.batch_size
        epoch, offset = divmod(position, self.size)
        order = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if offset == self.size:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                take = min(self.batch_size - len(batch), self.size - offset)
                batch.extend(order[offset : offset + take])
                offset += take
            yield batch[self.shard.slice(len(batch))]


class SeededItems(Dataset):
    """``dataset`` read by (index, seed): the item's random transforms draw from torch's RNG seeded with ``seed``.

    Left to the global RNG, the processes of a torchrun run (seeded alike) would flip and crop the k-th image of
    each one's slice the same way, and data-loading workers would draw from streams of their own.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = key
        with cpu_seeded(seed):
            return self.dataset[index]


def endless_images(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start: int,
    num_workers: int,
    pin_memory: bool,
    shard: Shard = SINGLE_PROCESS,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images, labels) batches forever, beginning where iteration ``start`` of a run with this seed would.

    ``batch_size`` is the global batch; each process of a data-parallel run gets its own slice of it.

    The loader gets its own generator: left to itself it would draw worker seeds from the global RNG when it
    starts, so a resumed run's noise would differ from the uninterrupted run's.
    """
    loader = DataLoader(
        SeededItems(dataset),
        batch_sampler=ResumableBatches(len(dataset), batch_size, seed, start, shard),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=seeded_generator(seed, start),
    )
    try:
        yield from loader
    except Exception as exc:  # whatever a dataset raises, the user needs to know it came from reading data
        raise DataError(f"reading the training data failed: {type(exc).__name__}: {exc}") from exc


def first_images(dataset: Dataset, count: int) -> Tensor:
    """The first ``count`` images of a dataset, stacked: the fixed inputs of a run's sample grids."""
    return torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])


def build_data(recipe: Recipe, registries: Registries) -> DomainData:
    """The recipe's dataset; a failure to read it becomes a DataError naming the ``[data]`` kind."""
    try:
        return registries.datasets.get(recipe.data.kind).factory(**recipe.data.settings)
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"[data] kind = {recipe.data.kind!r}: {exc}") from exc
    except MemoryError as exc:  # a dataset generated in memory
        raise DataError(
            f"[data] kind = {recipe.data.kind!r} does not fit in memory ({exc}); lower data.image_size or its size"
        ) from exc
