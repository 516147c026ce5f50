"""CIFAR-10 from torchvision's pickled batches under the data root."""

from __future__ import annotations

import os

import torch

from vggexport.data.dataset import KNOWN_STATS, ImageData
from vggexport.data.root import data_root, download_into, not_found

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(data_dir: str | os.PathLike[str] | None) -> ImageData:
    from torchvision import datasets

    root = data_root(data_dir)
    origin = "found"
    if not (root.path / "cifar-10-batches-py").is_dir():
        download_into("cifar10", root)
        origin = "downloaded"
    splits = {}
    for train in (True, False):
        try:
            ds = datasets.CIFAR10(str(root.path), train=train, download=False)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            raise not_found("cifar10", root, f"its batches are unreadable ({exc})") from None
        splits[train] = (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
    mean, std = KNOWN_STATS["cifar10"]
    return ImageData("cifar10", *splits[True], *splits[False], CIFAR10_CLASSES, mean, std,
                     folder=root.path / "cifar-10-batches-py", origin=origin)
