"""Fine-tuning from torchvision's weights: what ``vggexport train --init torchvision:NAME --weights FILE`` changes.

The trainer makes these three calls; the torchvision side (sources, weights, loading) is ``vggexport.pretrained``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vggexport.data.dataset import ImageData
from vggexport.errors import VggExportError
from vggexport.model import VGG, ModelConfig
from vggexport.pretrained import (DEFAULT_WEIGHTS, LAST_LAYER, TORCHVISION_HEAD, TorchvisionSource, load_weights,
                                  read_state_dict)
from vggexport.training.config import TrainConfig


def resolve_train_config(config: TrainConfig) -> TrainConfig:
    """With ``--init``: torchvision's architecture (cfg, batch norm, full width, 4096 head, 224 x 224)."""
    if config.init is None:
        if config.weights is not None or config.freeze_features:
            raise VggExportError("--weights and --freeze-features need --init torchvision:NAME")
        return config
    source = TorchvisionSource.parse(config.init)
    if config.weights is None:
        raise VggExportError(f"--init {config.init} needs --weights FILE (or --weights {DEFAULT_WEIGHTS})")
    size = source.model_config().image_size
    if config.image_size not in (None, size) or config.width not in (None, 1.0):
        raise VggExportError(f"--init {config.init} fixes --image-size {size} and --width 1.0 (the weights' "
                             f"classifier expects {size // 32}x{size // 32} features of 512 channels)")
    return dataclasses.replace(config, cfg=source.cfg, batch_norm=source.batch_norm, image_size=size, width=1.0,
                               head=TORCHVISION_HEAD)


def resolve_model_config(config: TrainConfig, model_config: ModelConfig, data: ImageData) -> ModelConfig:
    """The trained model's name, the resize policy its data was decoded with, and ``--init``'s normalization."""
    changes: dict[str, Any] = {"model_name": config.name or "", "resize_size": data.resize_size}
    if config.init is not None:
        if data.in_channels != 3:
            raise VggExportError(f"--init {config.init} needs RGB images; {data.name} has {data.in_channels} "
                                 "channel(s)")
        pretrained = TorchvisionSource.parse(config.init).model_config()
        # The imported features expect ImageNet's normalization, not this folder's statistics.
        changes.update(mean=pretrained.mean, std=pretrained.std)
    try:
        return dataclasses.replace(model_config, **changes)
    except ValueError as exc:
        raise VggExportError(str(exc)) from None


def initialize(model: VGG, config: TrainConfig) -> None:
    """``--init``: torchvision's weights everywhere but the last layer, which keeps its fresh init for the classes."""
    if config.init is None:
        return
    source = TorchvisionSource.parse(config.init)
    assert config.weights is not None  # resolve_train_config refused it
    state = read_state_dict(config.weights, source)
    load_weights(model, state, str(config.weights), source, skip=LAST_LAYER)
    if config.freeze_features:
        model.features.requires_grad_(False)
