"""``load_dataset``: one entry point over every source (IDX, CIFAR-10, image folders, synthetic)."""

from __future__ import annotations

import os

from vggexport.data.cifar import load_cifar10
from vggexport.data.dataset import ImageData
from vggexport.data.idx import load_idx_dataset
from vggexport.data.root import IDX_FOLDERS
from vggexport.data.synthetic import make_synthetic
from vggexport.errors import VggExportError
from vggexport.names import DATASETS

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
