"""A dataset as whole uint8 tensors (``ImageData``), ready to live on the training device, and its one-line description.

Every source is decoded once into ``ImageData`` (uint8 N x C x H x W plus int64 labels); batches are then sliced,
resized, augmented and normalized on the device by ``vggexport.transforms``, with no per-image work in workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# Published training-set statistics on [0, 1]; other sources compute their own.
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
# Horizontal flips keep a shirt a shirt but turn digits into non-digits.
FLIP_SAFE = {"fashion-mnist": True, "mnist": False, "cifar10": True, "imagefolder": True, "synthetic": False}

DISPLAY_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
                 "imagefolder": "image folder", "synthetic": "synthetic data"}


@dataclass(frozen=True)
class ImageData:
    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[Path, ...] = ()
    resize_size: int = 0  # the policy photos were decoded with (ModelConfig.resize_size); 0: none
    folder: Path | None = None  # where the files were read from; None: generated
    origin: str = "generated"  # "found" there, "downloaded" there by this call, or "generated"

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def hflip(self) -> bool:
        return FLIP_SAFE.get(self.name, False)

    def to(self, device: torch.device) -> ImageData:
        return dataclasses.replace(
            self, train_images=self.train_images.to(device), train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device), test_labels=self.test_labels.to(device),
        )


def describe(data: ImageData, splits: str) -> str:
    """One line for a person: which data, which splits, from where, e.g.
    ``data: Fashion-MNIST test split from /data/FashionMNIST/raw (found)``."""
    name = DISPLAY_NAMES.get(data.name, data.name)
    if data.folder is None:
        return f"data: {name} ({data.origin})"
    return f"data: {name} {splits} from {data.folder.absolute()} ({data.origin})"


def announce(data: ImageData, splits: str) -> None:
    """Print ``describe``'s line with the other info lines (stderr: stdout stays for results)."""
    from vggexport.console import console, escape

    console.print(escape(describe(data, splits)))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.to(torch.float64).div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def batch_indices(
    n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
    drop_last: bool = True, rank: int = 0, world_size: int = 1,
) -> Iterator[torch.Tensor]:
    """Index batches for one epoch: a fresh permutation per (seed, epoch), this rank's shard."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    order = order[rank::world_size]
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
