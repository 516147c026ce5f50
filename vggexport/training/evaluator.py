"""Loss and accuracy of a model on one split, in batches sized to the memory available."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vggexport.training import distributed
from vggexport.hardware import autocast, available_memory
from vggexport.model import CFGS, ModelConfig
from vggexport.training.batches import Split
from vggexport.transforms import preprocess

# A CPU gains nothing from evaluation batches past a few hundred MB of activations, and the seed's
# configuration (224x224, full width) must stay far below 8 GB of RSS with training state beside it.
CPU_EVAL_BYTES = 1 << 30
MAX_EVAL_BATCH = 1024
# cuDNN refuses tensors of 2^31 elements or more (a 1000 x 2 x 64 x 224 x 224 activation is 6.4e9).
MAX_TENSOR_ELEMENTS = 2**31 - 1


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                       reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy through probability targets: nll_loss has no deterministic CUDA kernel, this has.

    The one-hot targets come from a comparison, not F.one_hot, whose range check syncs the GPU every step.
    """
    classes = torch.arange(logits.shape[-1], device=logits.device)
    targets = (labels.unsqueeze(-1) == classes).to(logits.dtype)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)


def largest_activation(config: ModelConfig) -> int:
    """Elements per image of the largest feature map (the first conv's output: full resolution)."""
    side, largest = config.image_size, 0
    for item in CFGS[config.cfg]:
        if item == "M":
            side //= 2
        else:
            largest = max(largest, max(1, round(int(item) * config.width)) * side * side)
    return largest


def eval_batch_size(config: ModelConfig, device: torch.device, available_bytes: int | None = None) -> int:
    """Images per evaluation batch so that activations fit: a conv's input, output and batch-norm output
    live at once (x4 bytes, x4 for the allocator's slack), twice over with the flip average."""
    views = 2 if config.flip_average else 1
    per_image = largest_activation(config) * views
    if available_bytes is None:
        available_bytes = available_memory(device)
    budget = available_bytes // 4 if device.type == "cuda" else min(CPU_EVAL_BYTES, available_bytes // 4)
    by_memory = budget // (per_image * 4 * 4)
    by_elements = MAX_TENSOR_ELEMENTS // per_image
    return int(max(1, min(MAX_EVAL_BATCH, by_memory, by_elements)))


class Evaluator:
    """Scores the model rank 0 saves: its batch-norm statistics are broadcast first, then each rank scores
    its shard of the split and the sums are reduced, so every sample counts exactly once."""

    def __init__(self, config: ModelConfig, *, device: torch.device, precision: str = "fp32",
                 memory_format: torch.memory_format = torch.contiguous_format,
                 ctx: distributed.DistContext | None = None, batch_size: int | None = None) -> None:
        self.config, self.device, self.precision, self.memory_format = config, device, precision, memory_format
        self.ctx = ctx or distributed.DistContext(device=device)
        self.batch_size = batch_size or eval_batch_size(config, device)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, split: Split, prefix: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        distributed.broadcast_buffers(model, self.ctx)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        mine = self.ctx.shard(torch.arange(len(split), device=split.labels.device))
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start : start + self.batch_size]
            images, labels = split.images[chunk].to(self.device), split.labels[chunk].to(self.device)
            x = preprocess(images, image_size=self.config.image_size, mean=self.config.mean, std=self.config.std)
            with autocast(self.device, self.precision):
                logits = model(x.contiguous(memory_format=self.memory_format)).float()
            loss_sum += soft_cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
        model.train(was_training)
        self.ctx.all_reduce(loss_sum, correct)
        total = max(1, len(split))
        return {f"{prefix}_loss": loss_sum.item() / total, f"{prefix}_accuracy": correct.item() / total,
                f"{prefix}_samples": len(split)}
