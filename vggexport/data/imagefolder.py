"""Your own photos: image folders decoded at the model's input size by its resize/crop policy.

The policy (``vggexport.transforms.resize_crop``) is the one the uint8 ONNX graph applies
when serving, so a model trains, is evaluated and is served on the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vggexport.data.dataset import ImageData, channel_stats
from vggexport.errors import DataNotFoundError, VggExportError, first_line

class PhotoInput(Protocol):
    """What decoding photos for a model needs to know of it (a ModelConfig is one; data imports no model)."""

    class_names: tuple[str, ...]
    in_channels: int
    image_size: int
    resize_size: int


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
# torchvision's ImageNet evaluation policy: the shorter side to 256, then the centre 224 x 224.
RESIZE_PER_CROP = 256 / 224
MAX_LISTED = 5


def default_resize(image_size: int) -> int:
    """The shorter side a photo is resized to before the centre crop, in torchvision's proportion."""
    return round(image_size * RESIZE_PER_CROP)


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` by suffix; other files (README, .DS_Store) are not data."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def decode_photo(path: Path, mode: str) -> np.ndarray:
    """(H, W, C) uint8 in ``mode`` ("RGB" or "L"), upright by its EXIF orientation: as the server decodes uploads."""
    import warnings

    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette-with-transparency warnings: the conversion is defined
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # as the server: too many pixels is refused
        with Image.open(path) as image:
            image.load()  # decode here: a truncated file raises now, named by the caller
            converted = ImageOps.exif_transpose(image).convert(mode)
    return np.array(converted, dtype=np.uint8).reshape(converted.height, converted.width, -1)


def fit_to_model(pixels: np.ndarray, *, image_size: int, resize_size: int) -> torch.Tensor:
    """(H, W, C) uint8 photo -> (C, image_size, image_size) uint8 by the model's resize/crop policy."""
    from vggexport.transforms import resize_crop

    x = torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
    with torch.no_grad():
        x = resize_crop(x, image_size=image_size, resize_size=resize_size)
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)[0]


def read_photos(paths: list[Path], *, image_size: int, resize_size: int, mode: str) -> torch.Tensor:
    """Decode and fit every photo; every unreadable file is named in one error."""
    from PIL import Image, UnidentifiedImageError

    fitted, broken = [], []
    for path in paths:
        try:
            fitted.append(fit_to_model(decode_photo(path, mode), image_size=image_size, resize_size=resize_size))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            broken.append(f"{path} ({first_line(exc, 80)})")
    if broken:
        more = f" and {len(broken) - MAX_LISTED} more" if len(broken) > MAX_LISTED else ""
        raise VggExportError(f"{len(broken)} unreadable image file(s): {'; '.join(broken[:MAX_LISTED])}{more}; "
                             f"fix or remove them")
    channels = 1 if mode == "L" else 3
    return torch.stack(fitted) if fitted else torch.empty(0, channels, image_size, image_size, dtype=torch.uint8)


def read_image_folder(folder: Path, classes: list[str], image_size: int, resize_size: int,
                      mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = image_files(folder / name) if (folder / name).is_dir() else []
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise VggExportError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    images = read_photos(paths, image_size=image_size, resize_size=resize_size, mode=mode)
    return images, torch.tensor(labels, dtype=torch.int64)


def split_folders(root: Path) -> tuple[Path, Path | None]:
    """(train folder, evaluation folder or None): train/ and val/ (or test/) when present, else the root."""
    eval_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    train_dir = root / "train" if eval_dir is not None and (root / "train").is_dir() else root
    return train_dir, eval_dir


def load_image_folder(data_dir: str | os.PathLike[str] | None, *, image_size: int, channels: int,
                      resize_size: int | None = None) -> ImageData:
    """A folder of class sub-folders, with train/ and val/ (or test/) splits or a 90/10 split.

    Photos are decoded at the model's input size by its resize/crop policy (``resize_size``,
    default torchvision's proportion), the policy the exported graph applies when serving.
    """
    if data_dir is None or not Path(data_dir).is_dir():
        raise DataNotFoundError("imagefolder needs --data-dir pointing at a folder of class sub-folders "
                                f"(got {data_dir})")
    train_dir, eval_dir = split_folders(Path(data_dir))
    classes = sorted(p.name for p in train_dir.iterdir()
                     if p.is_dir() and p.name not in ("val", "test") and not p.name.startswith("."))
    if len(classes) < 2:
        raise VggExportError(f"{train_dir} needs at least two class sub-folders, found {len(classes)}")
    resize = default_resize(image_size) if resize_size is None else resize_size
    mode = "L" if channels == 1 else "RGB"
    images, labels = read_image_folder(train_dir, classes, image_size, resize, mode)
    if eval_dir is not None:
        test_images, test_labels = read_image_folder(eval_dir, classes, image_size, resize, mode)
    else:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        cut = max(1, len(order) // 10)
        test_images, test_labels = images[order[:cut]], labels[order[:cut]]
        images, labels = images[order[cut:]], labels[order[cut:]]
    mean, std = channel_stats(images)
    return ImageData("imagefolder", images, labels, test_images, test_labels, tuple(classes), mean, std,
                     resize_size=resize, folder=Path(data_dir), origin="found")


def photo_batches(config: PhotoInput, folder: str | os.PathLike[str],
                  batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Photos of a folder as the model sees them: uint8 (N, C, image_size, image_size) and labels or None.

    Class sub-folders named as the model's class names give labels (for accuracy); photos
    directly in the folder give None (for top-1 agreement). val/ or test/ is used when present.
    Each batch is decoded when it is asked for.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataNotFoundError(f"no image folder at {root}")
    root = split_folders(root)[1] or root
    paths, labels = photo_labels(root, config.class_names)
    mode = "L" if config.in_channels == 1 else "RGB"
    for start in range(0, len(paths), batch_size):
        images = read_photos(paths[start : start + batch_size], image_size=config.image_size,
                             resize_size=config.resize_size, mode=mode).numpy()
        yield images, None if labels is None else labels[start : start + batch_size]


def raw_photos(config: PhotoInput, folder: str | os.PathLike[str]) -> Iterator[tuple[np.ndarray, int | None]]:
    """Each photo as decoded, before any resize: uint8 (1, C, H, W) and its label or None.

    For the uint8 ONNX graph, which must do the resize and crop itself; same folder layouts as
    ``photo_batches``, same order.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataNotFoundError(f"no image folder at {root}")
    paths, labels = photo_labels(split_folders(root)[1] or root, config.class_names)
    mode = "L" if config.in_channels == 1 else "RGB"
    for i, path in enumerate(paths):
        try:
            pixels = decode_photo(path, mode)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for unreadable files (and bombs)
            raise VggExportError(f"unreadable image file: {path} ({type(exc).__name__})") from None
        yield pixels.transpose(2, 0, 1)[None].copy(), None if labels is None else int(labels[i])


def photo_labels(root: Path, class_names: tuple[str, ...]) -> tuple[list[Path], np.ndarray | None]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in image_files(root) if p.parent == root]
    if folders and loose:
        raise VggExportError(f"{root} mixes class sub-folders and loose images; use one or the other")
    if not folders:
        if not loose:
            raise VggExportError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
        return loose, None
    unknown = [p.name for p in folders if p.name not in class_names]
    if unknown:
        raise VggExportError(f"{root}: sub-folder(s) {', '.join(unknown[:MAX_LISTED])} are not class names of the "
                             f"model (labelled photos go in folders named as its class_names)")
    paths, labels = [], []
    for folder in folders:
        found = image_files(folder)
        paths += found
        labels += [class_names.index(folder.name)] * len(found)
    if not paths:
        raise VggExportError(f"no image files under {root}")
    return paths, np.asarray(labels, dtype=np.int64)
