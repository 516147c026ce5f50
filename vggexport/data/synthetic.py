"""Learnable fake data for smoke tests: each class a fixed blurry pattern plus noise."""

from __future__ import annotations

import torch

from vggexport.data.dataset import ImageData, channel_stats

def make_synthetic(*, num_classes: int = 10, size: int = 28, train: int = 2048, test: int = 512,
                   seed: int = 0) -> ImageData:
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
