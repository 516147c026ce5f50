"""The VGG architecture (Simonyan & Zisserman 2014), configs A/B/D/E.

Module names follow torchvision's ``models/vgg.py`` (``features``, ``avgpool``,
``classifier``) so its state_dicts load into ours. This file does no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vggexport.names import check_model_name, model_folder_name

# Numbers are conv output channels, "M" a 2x2 max-pool (the paper's Table 1).
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
DOWNSAMPLE = 32  # five 2x2 max-pools
INTERPOLATIONS = ("bilinear",)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model and preprocess its input.

    Saved inside every checkpoint and every export, so a model rebuilds from
    the file alone.
    """

    cfg: str = "A"
    batch_norm: bool = True
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 32
    head: int = 512
    dropout: float = 0.5
    width: float = 1.0
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    class_names: tuple[str, ...] = field(default_factory=tuple)
    dataset: str = "fashion-mnist"
    # The paper's test-time flip (section 3.2): at inference, average the class
    # posteriors of the image and its mirror. Only for mirror-symmetric data.
    flip_average: bool = False
    # The folder and served name; empty: torchvision's name for cfg and batch_norm (vgg11_bn, ...).
    model_name: str = ""
    # Evaluation preprocessing of a photo of any size: the shorter side to resize_size, then the
    # centre image_size x image_size (torchvision's Resize + CenterCrop). 0: stretch to image_size.
    resize_size: int = 0
    interpolation: str = "bilinear"  # antialiased when shrinking, half-pixel centres

    def __post_init__(self) -> None:
        if self.cfg not in CFGS:
            raise ValueError(f"unknown cfg {self.cfg!r}: choose one of {', '.join(CFGS)}")
        if self.image_size < DOWNSAMPLE or self.image_size % DOWNSAMPLE:
            raise ValueError(f"image_size must be a multiple of {DOWNSAMPLE} and >= {DOWNSAMPLE}, "
                             f"got {self.image_size}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean and std need one value per input channel")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError("class_names needs one name per class")
        if self.model_name:
            check_model_name(self.model_name)
        if self.resize_size and self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop (image_size {self.image_size})")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unsupported interpolation {self.interpolation!r}: choose {', '.join(INTERPOLATIONS)}")

    @property
    def name(self) -> str:
        return model_folder_name(self.model_name, self.cfg, self.batch_norm)

    @property
    def color_mode(self) -> str:
        """PIL's mode for decoding photos: channels in this order."""
        return {1: "L", 3: "RGB"}.get(self.in_channels, f"{self.in_channels} channels")

    @property
    def feature_size(self) -> int:
        return self.image_size // DOWNSAMPLE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**kwargs)


def make_features(layers: list[int | str], *, in_channels: int, batch_norm: bool, width: float) -> nn.Sequential:
    modules: list[nn.Module] = []
    channels = in_channels
    for item in layers:
        if item == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = max(1, round(int(item) * width))
        modules.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            modules.append(nn.BatchNorm2d(out))
        modules.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*modules)


class VGG(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.features = make_features(
            CFGS[config.cfg], in_channels=config.in_channels, batch_norm=config.batch_norm, width=config.width
        )
        last_channels = max(1, round(512 * config.width))
        side = config.feature_size
        # The pool's output equals the feature map at the configured size, so it
        # is an identity there; it never upsamples (that multiplies the first
        # linear layer by 49 at 32x32 and breaks ONNX export, pytorch#42653).
        self.avgpool = nn.AdaptiveAvgPool2d((side, side))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * side * side, config.head),
            nn.ReLU(inplace=True),
            nn.Dropout(p=config.dropout),
            nn.Linear(config.head, config.head),
            nn.ReLU(inplace=True),
            nn.Dropout(p=config.dropout),
            nn.Linear(config.head, config.num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's init: kaiming fan_out for conv, N(0, 0.01) for linear."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.flip_average and not self.training:
            return self.flip_averaged(x)
        return self.single_view(x)

    def single_view(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def flip_averaged(self, x: torch.Tensor) -> torch.Tensor:
        """Logits whose softmax is the mean of the two views' softmaxes (one batched pass).

        Returning log-mean-probabilities keeps the output a valid logit vector, so
        every consumer's softmax/argmax works unchanged.
        """
        views = self.single_view(torch.cat([x, x.flip(-1)])).unflatten(0, (2, -1))
        return torch.logsumexp(torch.log_softmax(views, dim=-1), dim=0) - math.log(2.0)


def build_model(config: ModelConfig) -> VGG:
    return VGG(config)


def _builder(cfg: str, batch_norm: bool, **overrides: Any) -> VGG:
    return VGG(ModelConfig(cfg=cfg, batch_norm=batch_norm, **overrides))


def vgg11(*, batch_norm: bool = False, **overrides: Any) -> VGG:
    return _builder("A", batch_norm, **overrides)


def vgg13(*, batch_norm: bool = False, **overrides: Any) -> VGG:
    return _builder("B", batch_norm, **overrides)


def vgg16(*, batch_norm: bool = False, **overrides: Any) -> VGG:
    return _builder("D", batch_norm, **overrides)


def vgg19(*, batch_norm: bool = False, **overrides: Any) -> VGG:
    return _builder("E", batch_norm, **overrides)


def example_input(config: ModelConfig, batch: int = 2) -> torch.Tensor:
    """A random float batch of the model's input shape: what tracing and exporting run the model on."""
    return torch.randn(batch, config.in_channels, config.image_size, config.image_size)
