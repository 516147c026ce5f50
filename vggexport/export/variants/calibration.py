"""int8 calibration: which images set the activation ranges (``CalibrationConfig``), and those images.

Calibration uses training images, chosen by a seeded permutation and preprocessed exactly as at inference
(vggexport.transforms.preprocess), so the activation ranges are those the deployed model sees.
``CalibrationConfig.images`` can ask for constant or noise images instead: a deliberately bad calibration,
which verify must refuse. Light to import: the CLI builds a CalibrationConfig before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vggexport.errors import VggExportError
from vggexport.export.variants.regions import DEFAULT_FP32_REGIONS, FP32_REGIONS

if TYPE_CHECKING:
    import numpy as np

    from vggexport.model import ModelConfig

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_IMAGES = ("train", "constant", "noise")


@dataclass(frozen=True)
class CalibrationConfig:
    method: str = "minmax"
    samples: int = 512
    seed: int = 0
    data_dir: str | None = None
    images: str = "train"
    keep_fp32: tuple[str, ...] = DEFAULT_FP32_REGIONS
    per_channel: bool = True
    # int8 activations (S8S8): as fast as uint8 on VNNI/AMX here (BENCHMARKS.md, "Precision variants"),
    # and free of U8S8's saturation on AVX2 CPUs without VNNI, where the file may be served too.
    activation_type: str = "int8"
    extra_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method = self.method.lower()
        if method not in CALIBRATION_METHODS:
            raise VggExportError(f"unknown calibration method {self.method!r}: choose {', '.join(CALIBRATION_METHODS)}")
        object.__setattr__(self, "method", method)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise VggExportError(f"calibration samples must be a whole number >= 1, not {self.samples!r}")
        if self.images not in CALIBRATION_IMAGES:
            raise VggExportError(f"unknown calibration images {self.images!r}: choose {', '.join(CALIBRATION_IMAGES)}")
        unknown = set(self.keep_fp32) - set(FP32_REGIONS)
        if unknown:
            raise VggExportError(f"unknown fp32 regions {sorted(unknown)}: choose from {', '.join(FP32_REGIONS)}")
        if self.activation_type not in ("uint8", "int8"):
            raise VggExportError(f"activation type must be uint8 or int8, not {self.activation_type!r}")


def calibration_images(config: ModelConfig, calibration: CalibrationConfig) -> np.ndarray:
    """float32 (N, C, S, S), normalized as at inference; N = calibration.samples."""
    import torch

    from vggexport.transforms import preprocess

    generator = torch.Generator().manual_seed(calibration.seed)
    if calibration.images == "train":
        from vggexport.data.dataset import announce
        from vggexport.data.load import load_dataset

        data = load_dataset(config.dataset, calibration.data_dir, image_size=config.image_size,
                            channels=config.in_channels)
        count = len(data.train_images)
        if calibration.samples > count:
            raise VggExportError(f"{calibration.samples} calibration samples asked for; the training set has {count}")
        announce(data, "train split")
        pixels = data.train_images[torch.randperm(count, generator=generator)[: calibration.samples]]
    else:
        shape = (calibration.samples, config.in_channels, config.image_size, config.image_size)
        if calibration.images == "constant":
            pixels = torch.zeros(shape, dtype=torch.uint8)
        else:
            pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        x = preprocess(pixels, image_size=config.image_size, mean=config.mean, std=config.std)
    return x.numpy()
