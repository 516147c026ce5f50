"""Datasets as whole uint8 tensors, ready to live on the training device.

Every source is decoded once into ``ImageData`` (uint8 N x C x H x W plus int64
labels); batches are then sliced, resized, augmented and normalized on the
device by ``vggexport.transforms``, with no per-image work in worker processes.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vggexport.errors import DataNotFoundError, VggExportError
from vggexport.names import DATASETS

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Published training-set statistics on [0, 1]; other sources compute their own.
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
# Horizontal flips keep a shirt a shirt but turn digits into non-digits.
FLIP_SAFE = {"fashion-mnist": True, "mnist": False, "cifar10": True, "imagefolder": True, "synthetic": False}
IDX_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vggexport" / "data"


DISPLAY_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
                 "imagefolder": "image folder", "synthetic": "synthetic data"}


@dataclass(frozen=True)
class DataRoot:
    """The one folder a downloadable dataset is read from (and downloaded into), and who chose it."""

    path: Path
    source: str  # "--data-dir", "$VGGEXPORT_DATA_DIR" or "the user cache"


def data_root(data_dir: str | os.PathLike[str] | None) -> DataRoot:
    """--data-dir, else $VGGEXPORT_DATA_DIR, else the user cache: the first one set is the root, as
    torchvision's ``root`` is; the others are never consulted."""
    if data_dir:
        return DataRoot(Path(data_dir), "--data-dir")
    if os.environ.get("VGGEXPORT_DATA_DIR"):
        return DataRoot(Path(os.environ["VGGEXPORT_DATA_DIR"]), "$VGGEXPORT_DATA_DIR")
    return DataRoot(default_cache_dir(), "the user cache")


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


def download_allowed() -> bool:
    return os.environ.get("VGGEXPORT_OFFLINE", "") in ("", "0")


def download_torchvision(dataset: str, target: Path) -> None:
    """Download into ``target``, the dataset's root, in torchvision's layout."""
    from torchvision import datasets

    cls = {"fashion-mnist": datasets.FashionMNIST, "mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[dataset]
    for train in (True, False):
        cls(str(target), train=train, download=True)


def not_found(dataset: str, root: DataRoot, reason: str) -> DataNotFoundError:
    layout = "cifar-10-batches-py/" if dataset == "cifar10" else f"{IDX_FOLDERS.get(dataset, dataset)}/raw/"
    return DataNotFoundError(
        f"{dataset} not found in {root.path.absolute()} ({root.source}) and {reason}; point --data-dir "
        f"(or, without it, $VGGEXPORT_DATA_DIR) at a folder holding {layout}"
    )


def download_into(dataset: str, root: DataRoot) -> None:
    """The dataset is absent from its root: download it there, or say why not (exit code 2)."""
    if not download_allowed():
        raise not_found(dataset, root, "downloads are off (VGGEXPORT_OFFLINE=1)")
    try:
        download_torchvision(dataset, root.path)
    except Exception as exc:  # torchvision raises many kinds when offline or when the root is read-only
        raise not_found(dataset, root, f"downloading it there failed ({type(exc).__name__})") from None


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


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.to(torch.float64).div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def make_synthetic(*, num_classes: int = 10, size: int = 28, train: int = 2048, test: int = 512, seed: int = 0) -> ImageData:
    """Learnable fake data: each class is a fixed blurry pattern plus noise. For smoke tests."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 1, size // 4, size // 4, generator=generator)
    prototypes = torch.nn.functional.interpolate(prototypes, size=(size, size), mode="bilinear", align_corners=False)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, num_classes, (n,), generator=generator)
        noise = torch.randn(n, 1, size, size, generator=generator) * 0.15
        pixels = (prototypes[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return pixels, labels

    train_x, train_y = sample(train)
    test_x, test_y = sample(test)
    mean, std = channel_stats(train_x)
    classes = tuple(f"class_{i}" for i in range(num_classes))
    return ImageData("synthetic", train_x, train_y, test_x, test_y, classes, mean, std)


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


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, image_size: int = 32, channels: int = 3,
    resize_size: int | None = None,
) -> ImageData:
    """``channels``, ``image_size`` and ``resize_size`` only matter for imagefolder, which decodes to a fixed shape."""
    if name in IDX_FOLDERS:
        return load_idx_dataset(name, data_dir)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "imagefolder":
        from vggexport.data.imagefolder import load_image_folder

        return load_image_folder(data_dir, image_size=image_size, channels=channels, resize_size=resize_size)
    if name == "synthetic":
        return make_synthetic()
    if name == "imagenet":  # an imported torchvision model: no dataset of ours, only the user's photos
        raise VggExportError("imagenet is not available here; check an imported model on your own photos "
                             "(vggexport.data.imagefolder.photo_batches) or on random inputs (--random-only)")
    raise VggExportError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
