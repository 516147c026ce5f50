"""The learning-rate schedule (torch.optim.lr_scheduler) and the time budget's choice of epochs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class WarmupCosine:
    """LR multiplier at a step: linear warm-up, then cosine decay to zero."""

    total_steps: int
    warmup: float

    @property
    def warmup_steps(self) -> int:
        return max(1, int(self.total_steps * self.warmup))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float) -> LambdaLR:
    """LambdaLR keeps a plain function out of its state_dict: the state is the step count alone, so a run
    resumed with more epochs follows the new curve instead of the saved one."""
    curve = WarmupCosine(total_steps, warmup)
    return LambdaLR(optimizer, lambda step: curve(step))


@dataclass(frozen=True)
class Timings:
    """Measured at the start of a run, before the schedule is fixed."""

    step_s: float  # one training step
    eval_image_s: float  # one image through evaluation (both views where flip-averaged)
    save_s: float  # one checkpoint plus metrics, curves and manifest

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BudgetPlan:
    epochs: int
    budget_s: float
    epoch_s: float  # predicted, evaluation and checkpoint included
    final_s: float  # the one test scoring and the shipped checkpoint
    margin_s: float

    def describe(self) -> str:
        epochs = f"{self.epochs} epoch{'' if self.epochs == 1 else 's'}"
        return (f"time budget {self.budget_s:.0f}s: {epochs} x {self.epoch_s:.1f}s predicted, "
                f"{self.final_s:.1f}s for the final test scoring, {self.margin_s:.0f}s margin; "
                f"repeat with --epochs {self.epochs}")


def safety_margin(budget_s: float) -> float:
    """Room for what the measurement misses: process start, imports, noisy neighbours, the last sync."""
    return max(5.0, 0.05 * budget_s)


def plan_epochs(budget_s: float, elapsed_s: float, timings: Timings, *, steps_per_epoch: int, val_images: int,
                test_images: int) -> BudgetPlan:
    """The most whole epochs that end, with per-epoch validation and checkpoints and the final test
    scoring, within the budget. At least one: a run that cannot fit one epoch still trains one, and says so."""
    epoch_s = steps_per_epoch * timings.step_s + val_images * timings.eval_image_s + timings.save_s
    final_s = test_images * timings.eval_image_s + timings.save_s
    margin_s = safety_margin(budget_s)
    left = budget_s - elapsed_s - margin_s - final_s
    epochs = max(1, math.floor(left / epoch_s)) if epoch_s > 0 else 1
    return BudgetPlan(epochs, budget_s, epoch_s, final_s, margin_s)
