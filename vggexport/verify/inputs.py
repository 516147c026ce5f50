"""What verify feeds the runtimes on real data: the test split the model was trained on, or a folder of photos.

Two inputs must never be confused. A dataset's images are already decoded the way training decoded
them, so the float input is ``preprocess`` of them (training's path, no second resize). Raw photos
of any size go to the uint8 preprocessing graph, whose torch twin is ``model_input`` (the model's
own resize/crop policy). Where the two coincide (the stretch policy, on a dataset's images), one
check feeds both kinds of model the same images.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from vggexport.checkpoint import Checkpoint
from vggexport.errors import DataNotFoundError
from vggexport.model import ModelConfig
from vggexport.names import DATASETS
from vggexport.export.spec import ExportSpec
from vggexport.verify.run import Batch, Batches, Check


def model_input(pixels: Any, config: ModelConfig) -> Any:
    """uint8 pixels of any size -> the float input by the model's resize/crop policy (what the uint8 graph runs)."""
    import torch

    from vggexport.transforms import normalize, resize_crop

    x = resize_crop(pixels.to(torch.float32) / 255.0, image_size=config.image_size, resize_size=config.resize_size)
    return normalize(x, mean=config.mean, std=config.std)


def dataset_input(images: Any, config: ModelConfig) -> Any:
    """A dataset's decoded images -> the float input exactly as training evaluated them."""
    from vggexport.transforms import preprocess

    return preprocess(images, image_size=config.image_size, mean=config.mean, std=config.std)


def random_pixel_batches(config: ModelConfig, seed: int = 1) -> Batches:
    """Random uint8 images of odd, non-square sizes in batches of 7, 1 and 2, for the graph's resize and crop."""
    import torch

    rng = np.random.default_rng(seed)
    side = max(config.image_size, config.resize_size)
    shapes = [(7, side + 5, side + 3), (1, side + 17, side - 3), (2, 2 * side + 1, side + 9)]
    batches = [rng.integers(0, 256, (n, config.in_channels, h, w), dtype=np.uint8) for n, h, w in shapes]

    def produce() -> Iterator[Batch]:
        for pixels in batches:
            with torch.no_grad():
                yield Batch(model_input(torch.from_numpy(pixels), config).numpy(), None, pixels)
    return produce


def mixed_batches(shape: tuple[int, int, int], sizes: tuple[int, ...], seed: int) -> Batches:
    """Random tensors in batches of every listed size, one comparison over all of them."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((n, *shape), dtype=np.float32) for n in sizes]

    def produce() -> Iterator[Batch]:
        yield from (Batch(a) for a in arrays)
    return produce


def dataset_batches(ckpt: Checkpoint, data_dir: str | None, samples: int | None, spec: ExportSpec,
                    with_pixels: bool) -> Batches:
    """The test split the model was trained against, in batches sized for any device."""
    import torch

    from vggexport.data.dataset import announce
    from vggexport.data.load import load_dataset

    config = ckpt.model_config
    data = load_dataset(config.dataset, data_dir, image_size=config.image_size, channels=config.in_channels)
    announce(data, "test split")
    images, labels = data.test_images[:samples], data.test_labels[:samples].numpy()
    batch_size = spec.real_batch_size(image_size=config.image_size, width=config.width,
                                      views=2 if config.flip_average else 1)

    def produce() -> Iterator[Batch]:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            with torch.no_grad():
                x = dataset_input(chunk, config).numpy()
            yield Batch(x, labels[start : start + batch_size], chunk.numpy() if with_pixels else None)
    return produce


def photo_batches(config: ModelConfig, folder: str, samples: int | None, spec: ExportSpec) -> Batches:
    """A folder of photos decoded at the model's size (labels from class sub-folders, or None)."""
    import torch

    from vggexport.data.imagefolder import photo_batches as decoded_photos

    batch_size = spec.real_batch_size(image_size=config.image_size, width=config.width,
                                      views=2 if config.flip_average else 1, limit=64)

    def produce() -> Iterator[Batch]:
        seen = 0
        for images, labels in decoded_photos(config, folder, batch_size=batch_size):
            keep = len(images) if samples is None else max(0, min(len(images), samples - seen))
            if keep == 0:
                return
            with torch.no_grad():
                x = dataset_input(torch.from_numpy(images[:keep]), config).numpy()
            yield Batch(x, None if labels is None else labels[:keep])
            seen += keep
    return produce


def raw_photo_batches(config: ModelConfig, folder: str, samples: int | None) -> Batches:
    """Each photo as decoded, before any resize, one per batch: for the uint8 graph's own resize and crop."""
    import torch

    from vggexport.data.imagefolder import raw_photos

    def produce() -> Iterator[Batch]:
        for index, (pixels, label) in enumerate(raw_photos(config, folder)):
            if samples is not None and index >= samples:
                return
            with torch.no_grad():
                x = model_input(torch.from_numpy(pixels), config).numpy()
            yield Batch(x, None if label is None else np.array([label]), pixels)
    return produce


def real_checks(ckpt: Checkpoint, data_dir: str | None, samples: int | None, spec: ExportSpec,
                need_pixels: bool) -> dict[str, Check]:
    """"real" for every file; "real-photos" too when uint8 graphs must see photos before resizing."""
    config = ckpt.model_config
    trained_on = ckpt.payload.get("train_config", {}).get("data_dir")
    if config.dataset in DATASETS:
        # By default the data the model was trained on: `verify --model FILE` needs no --data-dir repeated.
        root = data_dir or trained_on
        stretch = config.resize_size == 0  # then preprocess and the graph's policy are one computation
        if need_pixels and not stretch and root is None:  # before the data is read (and its line printed)
            raise DataNotFoundError(f"{config.dataset} needs --data-dir to show the uint8 graph its photos")
        checks = {"real": Check(dataset_batches(ckpt, root, samples, spec, with_pixels=stretch),
                                has_pixels=stretch, judge_top1=True)}
        if need_pixels and not stretch:
            checks["real-photos"] = Check(raw_photo_batches(config, root, samples), has_pixels=True,
                                          pixels_only=True, judge_top1=True)
        return checks
    if data_dir is None:
        raise DataNotFoundError(f"{config.name} was trained on {config.dataset}, which is not available here: pass "
                                f"--data-dir with a folder of photos (class sub-folders named as its classes for "
                                f"accuracy, loose photos for agreement), or --random-only")
    checks = {"real": Check(photo_batches(config, data_dir, samples, spec), judge_top1=True)}
    if need_pixels:
        checks["real-photos"] = Check(raw_photo_batches(config, data_dir, samples), has_pixels=True,
                                      pixels_only=True, judge_top1=True)
    return checks
