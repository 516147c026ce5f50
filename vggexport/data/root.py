"""Where a downloadable dataset lives: one root, as torchvision's ``root`` (``--data-dir``, ``$VGGEXPORT_DATA_DIR`` or
the cache), and the download into it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vggexport.errors import DataNotFoundError

# Where each IDX dataset sits under its root, in torchvision's layout.
IDX_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vggexport" / "data"


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
