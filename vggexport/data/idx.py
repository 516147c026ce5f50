"""MNIST and Fashion-MNIST from their IDX files (raw or .gz), in torchvision's layout under the data root."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from vggexport.data.dataset import KNOWN_STATS, ImageData
from vggexport.data.root import IDX_FOLDERS, data_root, download_into, not_found
from vggexport.errors import VggExportError

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or .gz): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise VggExportError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise VggExportError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise VggExportError(f"{path} is truncated: header says {shape}, data has {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_folders(root: Path, dataset: str) -> list[Path]:
    """torchvision's layout first (<root>/FashionMNIST/raw), then looser ones."""
    sub = IDX_FOLDERS[dataset]
    return [root / sub / "raw", root / sub, root / "raw", root]


def locate_idx(dataset: str, root: Path) -> dict[str, Path] | None:
    for folder in idx_folders(root, dataset):
        found = {f"{split}_{kind}": find_idx_file(folder, stem)
                 for split, stems in IDX_FILES.items() for kind, stem in zip(("images", "labels"), stems)}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def load_idx_dataset(dataset: str, data_dir: str | os.PathLike[str] | None) -> ImageData:
    root = data_root(data_dir)
    found = locate_idx(dataset, root.path)
    origin = "found"
    if found is None:
        download_into(dataset, root)
        found, origin = locate_idx(dataset, root.path), "downloaded"
        if found is None:
            raise not_found(dataset, root, "the download left no IDX files there")
    arrays = {key: read_idx(path) for key, path in found.items()}
    images = {s: torch.from_numpy(arrays[f"{s}_images"].copy()).unsqueeze(1) for s in IDX_FILES}
    labels = {s: torch.from_numpy(arrays[f"{s}_labels"].astype(np.int64)) for s in IDX_FILES}
    for split in IDX_FILES:
        if len(images[split]) != len(labels[split]):
            raise VggExportError(f"{dataset} {split}: {len(images[split])} images but {len(labels[split])} labels")
    classes = FASHION_CLASSES if dataset == "fashion-mnist" else tuple(str(i) for i in range(10))
    mean, std = KNOWN_STATS[dataset]
    return ImageData(dataset, images["train"], labels["train"], images["test"], labels["test"],
                     classes, mean, std, tuple(sorted(found.values())),
                     folder=found["train_images"].parent, origin=origin)
