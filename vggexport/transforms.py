"""Batch-level preprocessing and augmentation, done on the tensor's device.

One ``preprocess`` serves training, evaluation, export (``--with-preprocessing``)
and the server's image endpoint, so every path normalizes identically.

``resize_crop`` is the one resize policy for photos of any size: torchvision's
evaluation transform (``Resize(resize_size)`` of the shorter side, bilinear with
antialias, then ``CenterCrop(image_size)``). Image folders are decoded with it and
the uint8 ONNX graph runs it, so training, evaluation and serving see the same pixels.
``resize_size == 0`` is the older policy: stretch to image_size x image_size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def to_unit(images: torch.Tensor, *, image_size: int, always_resize: bool = False) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1] at (image_size, image_size).

    ``always_resize`` keeps the resize in exported graphs whose H and W are dynamic
    (a same-size bilinear resize is an identity).
    """
    return stretch(images.to(torch.float32) / 255.0, image_size=image_size, always_resize=always_resize)


def resized_size(height: int, width: int, resize_size: int) -> tuple[int, int]:
    """The shorter side becomes ``resize_size``; the longer keeps the aspect, truncated as torchvision does.

    Integer arithmetic (``torch.sym_min`` for the shorter side) so an exported graph keeps H and W dynamic.
    """
    shorter = torch.sym_min(height, width)
    return resize_size * height // shorter, resize_size * width // shorter


def centre_offset(size: int, crop: int) -> int:
    """torchvision's ``int(round((size - crop) / 2))``: Python rounds halves to even, so do we, in integers."""
    excess = size - crop
    half = excess // 2
    return half + (excess % 2) * (half % 2)


def resize_crop(x: torch.Tensor, *, image_size: int, resize_size: int, always_resize: bool = False) -> torch.Tensor:
    """float (N, C, H, W) of any H, W -> (N, C, image_size, image_size) by the model's resize policy."""
    if resize_size == 0:
        return stretch(x, image_size=image_size, always_resize=always_resize)
    height, width = x.shape[-2], x.shape[-1]
    new_height, new_width = resized_size(height, width, resize_size)
    if always_resize or (new_height, new_width) != (height, width):
        x = F.interpolate(x, size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=True)
    # index_select, not a slice: its output is image_size wide even to the exporter, which cannot
    # prove that a slice with a symbolic start stays inside the image.
    window = torch.arange(image_size, device=x.device)
    x = x.index_select(-2, window + centre_offset(new_height, image_size))
    return x.index_select(-1, window + centre_offset(new_width, image_size))


def stretch(x: torch.Tensor, *, image_size: int, always_resize: bool = False) -> torch.Tensor:
    if always_resize or x.shape[-2:] != (image_size, image_size):
        # antialias only matters when shrinking; it keeps big photos from aliasing.
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


def normalize(x: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def preprocess(
    images: torch.Tensor, *, image_size: int, mean: Sequence[float], std: Sequence[float],
    always_resize: bool = False,
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalized float32 (N, C, image_size, image_size)."""
    return normalize(to_unit(images, image_size=image_size, always_resize=always_resize), mean=mean, std=std)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by ``padding`` (black, before normalizing) and crop each image at a random offset."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device="cpu").to(x.device)
    rows = (offsets[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device="cpu").lt(0.5).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_erase(
    x: torch.Tensor, probability: float, generator: torch.Generator | None = None,
    area: tuple[float, float] = (0.02, 0.25), aspect: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017) on a normalized batch: zero one rectangle per chosen image.

    Zero is the dataset mean after normalizing, as with torchvision's RandomErasing after Normalize.
    """
    if probability <= 0:
        return x
    n, _, h, w = x.shape
    rand = torch.rand(6, n, generator=generator, device="cpu")
    fraction = area[0] + (area[1] - area[0]) * rand[0]
    log_lo, log_hi = torch.log(torch.tensor(aspect))
    ratio = torch.exp(log_lo + (log_hi - log_lo) * rand[1])
    heights = (torch.sqrt(fraction * ratio) * h).round().clamp(1, h)
    widths = (torch.sqrt(fraction / ratio) * w).round().clamp(1, w)
    tops = ((h - heights + 1) * rand[2]).floor()
    lefts = ((w - widths + 1) * rand[3]).floor()
    chosen = rand[4] < probability
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = ((rows >= tops.view(n, 1, 1)) & (rows < (tops + heights).view(n, 1, 1))
              & (cols >= lefts.view(n, 1, 1)) & (cols < (lefts + widths).view(n, 1, 1)) & chosen.view(n, 1, 1))
    return x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0)


def augment(
    x: torch.Tensor, *, crop_padding: int, hflip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    x = random_crop(x, crop_padding, generator)
    return random_hflip(x, generator) if hflip else x
