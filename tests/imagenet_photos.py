"""torchvision's vgg11_bn with seeded random weights, and the photos the ImageNet tests feed it.

Shared by tests/test_pretrained.py and the README section's run (tests/test_readme_torchvision.py), which
builds on the same weights file: see the session fixtures in tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

WEIGHTS = torchvision.models.VGG11_BN_Weights.IMAGENET1K_V1
PHOTO_SIZES = ((300, 229), (640, 480), (333, 500), (256, 256), (600, 200), (229, 300))
CLASSES = ("ant", "bee", "cow")


def framed_photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A smooth random picture in plain-coloured borders, saved as JPEG (real compression, real decoding).

    The centre crop cuts most of the borders away and a stretch keeps them, so the two policies
    give the model different pictures.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    blocks = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    pixels = np.array(blocks.resize(size, Image.Resampling.BICUBIC))
    band = max(size) // 5
    for region in (np.s_[:, :band], np.s_[:, width - band :], np.s_[:band], np.s_[height - band :]):
        pixels[region] = rng.integers(0, 256, 3)
    Image.fromarray(pixels).save(path, quality=92)
    return path


def photo_folder(root: Path) -> Path:
    """Three classes of four photos each: JPEG and PNG, RGB, L, RGBA and P, several sizes."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i, (mode, suffix) in enumerate((("RGB", "jpg"), ("L", "jpg"), ("RGBA", "png"), ("P", "png"))):
            path = framed_photo(root / name / f"{i}.jpg", PHOTO_SIZES[(c + i) % len(PHOTO_SIZES)], 10 * c + i)
            with Image.open(path) as image:
                converted = image.convert(mode) if mode != "P" else image.quantize(32)
            path.unlink()
            converted.save(root / name / f"{i}.{suffix}")
    return root


def random_vgg11_bn(folder: Path) -> tuple[Path, torch.nn.Module]:
    """torchvision's vgg11_bn, seeded random weights, saved as a state_dict .pth as torchvision distributes it."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11_bn().eval()
    with torch.no_grad():  # random BN statistics, so eval-mode batch norm is not an identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        # A random VGG answers one class for every image; cancelling its mean response in the last
        # bias makes the top-1 follow the image, so a wrong resize or crop changes it.
        photos = [framed_photo(folder / f"c{i}.jpg", (280, 260), 100 + i) for i in range(8)]
        calibration = torch.stack([WEIGHTS.transforms()(Image.open(photo)) for photo in photos])
        model.classifier[6].bias -= model(calibration).mean(0)
    path = folder / "vgg11_bn-random.pth"
    torch.save(model.state_dict(), path)
    return path, model
