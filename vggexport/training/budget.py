"""``--time-budget``: time the first steps, an evaluation and a checkpoint, then fix the epochs.

The measurement trains on the real model and data, then puts every weight, optimizer and scaler state
back, so the run that follows is exactly the run ``--epochs N`` makes with the N printed.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vggexport.training import distributed
from vggexport.checkpoint import save_checkpoint
from vggexport.training.progress import plot_curves, write_metrics
from vggexport.training.batches import Split
from vggexport.training.schedule import BudgetPlan, Timings, plan_epochs

if TYPE_CHECKING:
    from vggexport.training.trainer import Trainer

WARMUP_STEPS = 3  # first steps pay for kernel selection and allocator growth
MAX_TIMED_STEPS = 30
TIMED_FRACTION = 0.02  # of the budget, at most, spent timing steps
EVAL_SAMPLE = 512


def process_age() -> float:
    """Seconds since this process started (Linux), so the budget also pays for Python's and torch's imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def snapshot(trainer: Trainer) -> dict[str, Any]:
    parts = {"model": trainer.model, "optimizer": trainer.optimizer, "scaler": trainer.scaler}
    if trainer.ema is not None:
        parts["ema"] = trainer.ema
    return {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}


def put_back(trainer: Trainer, saved: dict[str, Any]) -> None:
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    if saved["scaler"]:  # a disabled scaler (bf16, fp32) has no state
        trainer.scaler.load_state_dict(saved["scaler"])
    if "ema" in saved:
        trainer.ema.load_state_dict(saved["ema"])
    trainer.step = 0


def time_steps(trainer: Trainer, budget_s: float) -> float:
    """Seconds per training step, after warm-up, with a constant learning rate (undone afterwards)."""
    trainer.scheduler = torch.optim.lr_scheduler.ConstantLR(trainer.optimizer, factor=1.0, total_iters=0)
    batches = trainer.source.epoch(0)
    trainer.forward.train()
    for _ in range(min(WARMUP_STEPS, trainer.steps_per_epoch)):
        trainer.train_step(*next(batches))
    sync(trainer.device)
    began, timed = time.perf_counter(), 0
    for x, labels in batches:
        trainer.train_step(x, labels)
        timed += 1
        enough = timed >= MAX_TIMED_STEPS or time.perf_counter() - began > TIMED_FRACTION * budget_s
        if not keep_timing(trainer, enough):
            break
    sync(trainer.device)
    return (time.perf_counter() - began) / max(1, timed)


def keep_timing(trainer: Trainer, done: bool) -> bool:
    """Rank 0 decides for all: data-parallel ranks must take the same number of steps."""
    return distributed.rank0_decides(not done, trainer.dist, trainer.device)


def out_of_time(plan: BudgetPlan | None, elapsed_s: float, last_epoch_s: float) -> bool:
    """The safety valve: when the machine has slowed down so much since the measurement that one more epoch
    and the final scoring would pass the budget, stop now (the schedule stays as fixed; the run ends on time)."""
    return plan is not None and plan.budget_s - elapsed_s < last_epoch_s + plan.final_s


def time_evaluation(trainer: Trainer) -> float:
    """Seconds per evaluated image (both views where flip-averaged), after one warm-up batch."""
    split = trainer.splits.val if trainer.splits.val is not None else trainer.splits.test
    warm = Split(split.images[: trainer.evaluator.batch_size], split.labels[: trainer.evaluator.batch_size])
    trainer.evaluator(trainer.eval_model, warm, "warm")
    sample = split.first(min(len(split), max(EVAL_SAMPLE, trainer.evaluator.batch_size)))
    sync(trainer.device)
    began = time.perf_counter()
    trainer.evaluator(trainer.eval_model, sample, "timing")
    sync(trainer.device)
    return (time.perf_counter() - began) / max(1, len(sample))


def time_saving(trainer: Trainer) -> float:
    """One checkpoint, metrics file and curves, written where nothing is kept."""
    began = time.perf_counter()
    if trainer.dist.is_main:
        with tempfile.TemporaryDirectory(dir=trainer.checkpointer.out_dir) as scratch:
            save_checkpoint(Path(scratch) / "timing.pt", model_config=trainer.model_config,
                            state={"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()})
            records = [{"record": "epoch", "epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}]
            write_metrics(Path(scratch) / "metrics.jsonl", records)
            plot_curves(Path(scratch) / "curves.png", records, "timing")
    return time.perf_counter() - began


def calibrate(trainer: Trainer) -> BudgetPlan:
    budget_s = float(trainer.config.time_budget)
    saved = snapshot(trainer)
    timings = Timings(step_s=time_steps(trainer, budget_s), eval_image_s=time_evaluation(trainer),
                      save_s=time_saving(trainer))
    put_back(trainer, saved)
    val = len(trainer.splits.val.first(trainer.config.eval_samples)) if trainer.splits.val is not None else 0
    plan = plan_epochs(budget_s, time.perf_counter() - trainer.started, timings,
                       steps_per_epoch=trainer.steps_per_epoch, val_images=val,
                       test_images=len(trainer.splits.test.first(trainer.config.eval_samples)))
    chosen = torch.tensor(plan.epochs, device=trainer.device)
    if trainer.dist.enabled:  # every rank follows rank 0's measurement
        torch.distributed.broadcast(chosen, src=0)
    trainer.timings = timings
    return BudgetPlan(int(chosen.item()), plan.budget_s, plan.epoch_s, plan.final_s, plan.margin_s)
