"""``--time-budget``: time the first steps, an evaluation and a checkpoint, then fix the epochs.

The measurement trains on the real model and data, then puts every weight, optimizer and scaler state
back, so the run that follows is exactly the run ``--epochs N`` makes with the N printed.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggexport.training.schedule import BudgetPlan, Timings, plan_epochs

WARMUP_STEPS = 3  # first steps pay for kernel selection and allocator growth
MAX_TIMED_STEPS = 30
TIMED_FRACTION = 0.02  # of the budget, at most, spent timing steps
EVAL_SAMPLE = 512


@dataclass(frozen=True)
class Probes:
    """What the budget times, as callables the Trainer passes in: this module reads and sets no Trainer attribute.

    ``steps`` yields after each training step of one epoch; ``evaluate(n)`` scores the first ``n`` held-out
    images (0: one warm-up batch) and returns how many it scored; ``save(folder)`` writes one checkpoint,
    metrics file and curves there; ``agree(done)`` is rank 0's decision for every rank; ``sync`` waits for
    the device; ``broadcast(epochs)`` is rank 0's epoch count on every rank.
    """

    steps: Callable[[], Iterator[None]]
    evaluate: Callable[[int], int]
    save: Callable[[Path], None]
    scratch_dir: Path | None  # None on the ranks that write nothing
    agree: Callable[[bool], bool]
    sync: Callable[[], None]
    broadcast: Callable[[int], int]


def process_age() -> float:
    """Seconds since this process started (Linux), so the budget also pays for Python's and torch's imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def snapshot(parts: dict[str, Any]) -> dict[str, Any]:
    """Copies of the state of every part the measurement trains (model, optimizer, scaler, EMA)."""
    return {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}


def put_back(parts: dict[str, Any], saved: dict[str, Any]) -> None:
    """The state ``snapshot`` copied, loaded back, so the run after the measurement starts where it would have."""
    for name, part in parts.items():
        if saved[name]:  # a disabled scaler (bf16, fp32) has no state
            part.load_state_dict(saved[name])


def time_steps(probes: Probes, budget_s: float) -> float:
    """Seconds per training step, after warm-up (the Trainer holds the learning rate constant meanwhile)."""
    steps = probes.steps()
    for _ in zip(range(WARMUP_STEPS), steps):
        pass
    probes.sync()
    began, timed = time.perf_counter(), 0
    for _ in steps:
        timed += 1
        enough = timed >= MAX_TIMED_STEPS or time.perf_counter() - began > TIMED_FRACTION * budget_s
        if not probes.agree(not enough):  # data-parallel ranks must take the same number of steps
            break
    probes.sync()
    return (time.perf_counter() - began) / max(1, timed)


def out_of_time(plan: BudgetPlan | None, elapsed_s: float, last_epoch_s: float) -> bool:
    """The safety valve: when the machine has slowed down so much since the measurement that one more epoch
    and the final scoring would pass the budget, stop now (the schedule stays as fixed; the run ends on time)."""
    return plan is not None and plan.budget_s - elapsed_s < last_epoch_s + plan.final_s


def time_evaluation(probes: Probes) -> float:
    """Seconds per evaluated image (both views where flip-averaged), after one warm-up batch."""
    probes.evaluate(0)
    probes.sync()
    began = time.perf_counter()
    images = probes.evaluate(EVAL_SAMPLE)
    probes.sync()
    return (time.perf_counter() - began) / max(1, images)


def time_saving(probes: Probes) -> float:
    """One checkpoint, metrics file and curves, written where nothing is kept."""
    began = time.perf_counter()
    if probes.scratch_dir is None:
        return 0.0
    with tempfile.TemporaryDirectory(dir=probes.scratch_dir) as scratch:
        probes.save(Path(scratch))
    return time.perf_counter() - began


def calibrate(probes: Probes, budget_s: float, elapsed_s: Callable[[], float], *, steps_per_epoch: int,
              val_images: int, test_images: int) -> tuple[BudgetPlan, Timings]:
    """The epochs that fit ``budget_s``, from measured steps, evaluation and saving; and those measurements."""
    timings = Timings(step_s=time_steps(probes, budget_s), eval_image_s=time_evaluation(probes),
                      save_s=time_saving(probes))
    plan = plan_epochs(budget_s, elapsed_s(), timings, steps_per_epoch=steps_per_epoch, val_images=val_images,
                       test_images=test_images)
    epochs = probes.broadcast(plan.epochs)  # every rank follows rank 0's measurement
    return BudgetPlan(epochs, plan.budget_s, plan.epoch_s, plan.final_s, plan.margin_s), timings
