"""What a run is built from: the model's config (from the options and the data), the model, the optimizer."""

from __future__ import annotations

import torch

from vggexport.data.dataset import ImageData
from vggexport.errors import VggExportError
from vggexport.model import VGG, ModelConfig, build_model
from vggexport.training import finetune
from vggexport.training.config import TrainConfig


def make_optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # Weight decay on conv/linear weights only; decaying BN scales and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and p.requires_grad]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters; the per-parameter loop cost ~3 % of a CPU step here.
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, fused=True)
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def model_config_for(config: TrainConfig, data: ImageData) -> ModelConfig:
    try:
        return ModelConfig(
            cfg=config.cfg, batch_norm=config.batch_norm, in_channels=data.in_channels,
            num_classes=len(data.class_names), image_size=config.image_size, head=config.head,
            dropout=config.dropout, width=config.width, mean=data.mean, std=data.std,
            class_names=data.class_names, dataset=data.name,
            flip_average=data.hflip if config.flip_average is None else config.flip_average,
        )
    except ValueError as exc:
        raise VggExportError(str(exc)) from None


def build_training_model(config: TrainConfig, model_config: ModelConfig, device: torch.device,
                         memory_format: torch.memory_format) -> VGG:
    """The one place the trained model is built (fine-tuning hooks that load or freeze weights go here)."""
    model = build_model(model_config)
    finetune.initialize(model, config)  # --init: torchvision's weights, the last layer fresh for the classes
    # Training inputs always have the configured size, where adaptive pooling is an identity; its CUDA
    # backward has no deterministic kernel, so train through a plain identity (no parameters, same state_dict).
    model.avgpool = torch.nn.Identity()
    if config.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device, memory_format=memory_format)
