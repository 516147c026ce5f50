"""Where training batches come from: the held-out validation split and a stateless batch source.

Every random choice in an epoch is a function of (seed, epoch, step, rank), so a run stopped at any step
resumes with the same data order and the same augmentation, and each data-parallel rank draws its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vggexport.data.dataset import ImageData
from vggexport.errors import VggExportError
from vggexport.transforms import augment, normalize, random_erase, to_unit

SEED_MIX = 1_000_003


def stream_seed(*parts: int) -> int:
    """One seed from several integers (seed, epoch, step, rank): distinct tuples give distinct streams."""
    value = 0
    for part in parts:
        value = (value * SEED_MIX + int(part) + 1) % (2**63 - 1)
    return value


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int | None) -> Split:
        return self if n is None else Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split | None
    test: Split

    def to(self, device: torch.device) -> Splits:
        return Splits(self.train.to(device), self.val.to(device) if self.val else None, self.test.to(device))


def stratified_holdout(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` samples, each class in proportion to its share (within one sample), chosen at random.

    Each sample gets the key (rank within its class, in a seeded random order, + 0.5) / class size; the n
    smallest keys take about the same fraction of every class.
    """
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(stream_seed(seed, 17)))
    shuffled = labels[order]
    grouped = torch.argsort(shuffled, stable=True)
    grouped_labels = shuffled[grouped]
    counts = torch.bincount(grouped_labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[grouped_labels]
    key = (rank.double() + 0.5) / counts[grouped_labels].double()
    return order[grouped[torch.argsort(key, stable=True)[:n]]]


def make_splits(data: ImageData, *, val_size: int, seed: int, batch_size: int) -> Splits:
    train = Split(data.train_images, data.train_labels)
    test = Split(data.test_images, data.test_labels)
    if val_size == 0:
        return Splits(train, None, test)
    if val_size < 0 or len(train) - val_size < batch_size:
        raise VggExportError(f"--val-size {val_size} leaves fewer than one batch ({batch_size}) of the "
                             f"{len(train)} training images")
    held = stratified_holdout(train.labels, val_size, seed)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[held] = False
    return Splits(Split(train.images[keep], train.labels[keep]), Split(train.images[held], train.labels[held]), test)


@dataclass(frozen=True)
class Augmentation:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    crop_padding: int
    erase: float
    memory_format: torch.memory_format = torch.contiguous_format


class BatchSource:
    """Global batches of one epoch from a permutation of (seed, epoch); each rank takes every N-th sample."""

    def __init__(self, split: Split, *, batch_size: int, seed: int, augmentation: Augmentation,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise VggExportError(f"--batch-size {batch_size} must divide among {world_size} processes")
        self.split, self.batch_size, self.seed, self.augmentation = split, batch_size, seed, augmentation
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = len(split) // batch_size
        if self.steps_per_epoch == 0:
            raise VggExportError(f"batch size {batch_size} exceeds the {len(split)} training images")

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.split), generator=torch.Generator().manual_seed(stream_seed(self.seed, epoch)))

    def indices(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """This rank's sample indices for steps ``start`` .. end of the epoch (a resumed run skips the rest)."""
        order = self.order(epoch)
        for i in range(start, self.steps_per_epoch):
            yield order[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world_size]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, index in enumerate(self.indices(epoch, start), start):
            yield self.batch(index, torch.Generator().manual_seed(stream_seed(self.seed, epoch, i, self.rank)))

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.augmentation
        index = index.to(self.split.labels.device)
        x = to_unit(self.split.images[index], image_size=a.image_size)
        x = augment(x, crop_padding=a.crop_padding, hflip=a.hflip, generator=generator)
        x = random_erase(normalize(x, mean=a.mean, std=a.std), a.erase, generator)
        return x.contiguous(memory_format=a.memory_format), self.split.labels[index]
