"""The training run, top to bottom: set up, plan the epochs, train, pick the model, score it once on test."""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vggexport.store import paths
from vggexport.training import distributed, finetune
from vggexport.data.dataset import ImageData, describe
from vggexport.data.load import load_dataset
from vggexport.errors import VggExportError
from vggexport.store.fileio import ensure_writable_dir
from vggexport.hardware import (
    autocast,
    batch_must_fit,
    configure_determinism,
    describe_device,
    make_grad_scaler,
    prefers_channels_last,
    resolve_precision,
)
from vggexport.store.manifest import dataset_identity
from vggexport.model import ModelConfig, build_model
from vggexport.console import console, escape
from vggexport.training.progress import epoch_line, epoch_progress, run_line, shipped_line
from vggexport.training.batches import Augmentation, BatchSource, Split, Splits, make_splits, stream_seed
from vggexport.training import budget
from vggexport.training.budget import out_of_time, process_age
from vggexport.training.checkpointer import Checkpointer
from vggexport.training.config import TrainConfig, resolve
from vggexport.training.selection import Selection
from vggexport.training.setup import build_training_model, make_optimizer, model_config_for
from vggexport.training.evaluator import Evaluator, soft_cross_entropy
from vggexport.training.schedule import BudgetPlan, Timings, warmup_cosine


@dataclass
class TrainResult:
    model_config: ModelConfig
    out_dir: Path
    final: dict[str, Any]  # the test record: the shipped model scored once
    steps: int
    epochs: int


class Trainer:
    """One run. Its parts live elsewhere: batches (BatchSource), scoring (Evaluator), files (Checkpointer)."""

    def __init__(self, config: TrainConfig) -> None:
        self.started = time.perf_counter() - process_age()  # the budget counts from the process's start
        self.requested_epochs = config.epochs
        self.dist = distributed.setup(config.device)
        self.device = self.dist.device
        # --init fixes torchvision's architecture before the recipe fills in the rest.
        self.config = config = resolve(finetune.resolve_train_config(config), self.device)
        self.precision = resolve_precision(config.precision, self.device)
        configure_determinism(config.deterministic, self.device)
        data, self.splits = self.load_data()
        self.model_config = finetune.resolve_model_config(config, model_config_for(config, data), data)
        self.dataset = dataset_identity(data.name, data.files)
        self.data_line = describe(data, "train and test splits")
        self.memory_format = (torch.channels_last if prefers_channels_last(self.device, self.model_config.width)
                              else torch.contiguous_format)
        torch.manual_seed(config.seed)  # the initial weights: the same on every rank
        self.model = build_training_model(config, self.model_config, self.device, self.memory_format)
        self.forward = self.wrap(self.model)
        self.optimizer = make_optimizer(config.optimizer, self.model, config.lr, config.weight_decay)
        self.scaler = make_grad_scaler(self.device, self.precision)
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
                    if config.ema else None)
        self.source = BatchSource(self.splits.train, batch_size=config.batch_size, seed=config.seed,
                                  augmentation=self.augmentation(data), rank=self.dist.rank,
                                  world_size=self.dist.world_size)
        self.evaluator = Evaluator(self.model_config, device=self.device, precision=self.precision,
                                   memory_format=self.memory_format, ctx=self.dist)
        self.checkpointer = Checkpointer(
            ensure_writable_dir(paths.model_dir(config.artifacts, self.model_config.name)), self.model_config,
            is_main=self.dist.is_main,
            run_info={"train_config": asdict(config), "precision": self.precision,
                      "device": describe_device(self.device)})
        self.step, self.records, self.selection = 0, [], Selection()
        self.epochs, self.plan, self.timings = config.epochs, None, None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def load_data(self) -> tuple[ImageData, Splits]:
        with distributed.main_first(self.dist):  # rank 0 reads (or downloads) first, the others then read
            data = load_dataset(self.config.dataset, self.config.data_dir, image_size=self.config.image_size,
                                channels=3)
        splits = make_splits(data, val_size=self.config.val_size, seed=self.config.seed,
                             batch_size=self.config.batch_size)
        return data, splits.to(self.device)

    def augmentation(self, data: ImageData) -> Augmentation:
        mc = self.model_config
        return Augmentation(mc.image_size, mc.mean, mc.std, data.hflip, self.config.crop_padding,
                            self.config.erase, self.memory_format)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        forward: torch.nn.Module = model
        if self.dist.enabled:  # checkpoints come from the bare model, so they carry no "module." prefixes
            forward = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        return torch.compile(forward) if self.config.compile else forward

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def steps_per_epoch(self) -> int:
        return self.source.steps_per_epoch

    def say(self, message: str) -> None:
        if self.dist.is_main:
            console.print(message)

    # -- the run -----------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if self.config.resume:
            self.restore()
        else:
            self.plan_run()
        self.announce()
        while self.step < self.epochs * self.steps_per_epoch and not self.stopping():
            epoch, start = divmod(self.step, self.steps_per_epoch)
            began = time.perf_counter()
            stats = self.train_epoch(epoch, start)
            self.end_epoch(epoch, stats, partial=self.step % self.steps_per_epoch != 0)
            if self.step < self.epochs * self.steps_per_epoch and self.out_of_time(time.perf_counter() - began):
                self.say(f"[yellow]stopping after epoch {epoch + 1} of {self.epochs}: this machine is slower "
                         f"than measured at the start, and another epoch would pass the time budget[/yellow]")
                break
        result = self.ship()
        if self.dist.enabled:
            same = distributed.parameters_identical(self.model, self.dist)
            self.say(f"parameters {'identical' if same else 'DIFFER'} across {self.dist.world_size} processes")
            # DDP's reducer keeps the process group and gloo's pending work alive; collected at interpreter
            # exit, gloo's threads can abort the process ("terminate called without an active exception").
            self.forward = self.model
            gc.collect()
            distributed.teardown(self.dist)
        return result

    def out_of_time(self, last_epoch_s: float) -> bool:
        late = out_of_time(self.plan, time.perf_counter() - self.started, last_epoch_s)
        return distributed.rank0_decides(late, self.dist, self.device)

    def plan_run(self) -> None:
        """Fix the number of epochs (measured against the time budget, if one is set) and the schedule."""
        if self.config.time_budget is not None:
            self.plan, self.timings = self.measure_budget(float(self.config.time_budget))
            self.epochs = self.plan.epochs
            self.say(self.plan.describe())
        self.scheduler = warmup_cosine(self.optimizer, self.epochs * self.steps_per_epoch, self.config.warmup)

    def measure_budget(self, budget_s: float) -> tuple[BudgetPlan, Timings]:
        """Time steps, an evaluation and a save on the real model and data, then put every state back."""
        parts = {"model": self.model, "optimizer": self.optimizer, "scaler": self.scaler,
                 **({"ema": self.ema} if self.ema is not None else {})}
        saved = budget.snapshot(parts)
        self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        val, test = self.splits.val, self.splits.test
        held_out = val if val is not None else test

        def steps() -> Iterator[None]:
            self.forward.train()
            for x, labels in self.source.epoch(0):
                self.train_step(x, labels)
                yield

        def evaluate(images: int) -> int:
            size = self.evaluator.batch_size
            sample = held_out.first(min(len(held_out), max(images, size))) if images else \
                Split(held_out.images[:size], held_out.labels[:size])
            self.evaluator(self.eval_model, sample, "timing")
            return len(sample)

        probes = budget.Probes(
            steps=steps, evaluate=evaluate,
            broadcast=lambda epochs: distributed.rank0_value(epochs, self.dist, self.device),
            save=lambda folder: self.checkpointer.write_sample(folder, self.model, self.optimizer),
            scratch_dir=self.checkpointer.out_dir if self.dist.is_main else None,
            agree=lambda keep_going: distributed.rank0_decides(keep_going, self.dist, self.device),
            sync=lambda: torch.cuda.synchronize(self.device) if self.device.type == "cuda" else None)
        result = budget.calibrate(
            probes, budget_s, lambda: time.perf_counter() - self.started, steps_per_epoch=self.steps_per_epoch,
            val_images=len(val.first(self.config.eval_samples)) if val is not None else 0,
            test_images=len(test.first(self.config.eval_samples)))
        budget.put_back(parts, saved)
        self.step = 0
        return result

    def announce(self) -> None:
        self.say(escape(self.data_line))
        self.say(run_line(self.model_config, self.dataset["name"], describe_device(self.device), self.precision,
                          epochs=self.epochs, steps=self.steps_per_epoch, batch=self.config.batch_size,
                          processes=self.dist.world_size if self.dist.enabled else 1,
                          held_out=len(self.splits.val) if self.splits.val else 0))

    def stopping(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def train_epoch(self, epoch: int, start: int) -> dict[str, float]:
        self.forward.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, began = 0, time.perf_counter()
        with epoch_progress(self.steps_per_epoch, epoch + 1, self.epochs, show=self.dist.is_main) as progress, \
                batch_must_fit(self.config.batch_size, self.device):
            for i, (x, labels) in enumerate(self.source.epoch(epoch, start), start):
                batch_loss, batch_correct = self.train_step(x, labels)
                loss_sum += batch_loss
                correct += batch_correct
                seen += len(labels)
                if i % 20 == 19 or self.stopping():  # .item() syncs the device: not every step
                    progress.update(0, completed=i + 1, loss=loss_sum.item() / seen, acc=correct.item() / seen,
                                    ips=seen * self.dist.world_size / (time.perf_counter() - began))
                if self.stopping():
                    break
        seconds = time.perf_counter() - began
        counted = torch.tensor(seen, device=self.device)
        self.dist.all_reduce(loss_sum, correct, counted)
        seen = max(1, int(counted.item()))
        return {"train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen,
                "images_per_second": seen / seconds, "train_seconds": seconds}

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(stream_seed(self.config.seed, self.step, self.dist.rank))  # dropout: per rank, per step
        with autocast(self.device, self.precision):
            logits = self.forward(x)
        loss = soft_cross_entropy(logits.float(), labels, self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return loss.detach() * len(labels), (logits.argmax(1) == labels).sum()

    def end_epoch(self, epoch: int, stats: dict[str, float], partial: bool) -> None:
        record: dict[str, Any] = {"record": "epoch", "epoch": epoch + 1, "step": self.step,
                                  "lr": self.optimizer.param_groups[0]["lr"],
                                  "elapsed_s": time.perf_counter() - self.started, **stats}
        if partial:
            record["partial"] = True
        if self.splits.val is not None:
            record.update(self.evaluator(self.eval_model, self.splits.val.first(self.config.eval_samples), "val"))
            self.selection.consider(record, self.eval_model, self.step)
        self.records.append(record)
        self.checkpointer.save_state(self.state())
        self.checkpointer.write_records(self.records, self.title)
        self.say(epoch_line(record))
        self.dist.barrier()

    @property
    def title(self) -> str:
        return f"{self.model_config.name} on {self.dataset['name']}"

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "step": self.step, "epoch": self.step // self.steps_per_epoch, "epochs": self.epochs,
            "plan": asdict(self.plan) if self.plan else None,
            "timings": self.timings.to_dict() if self.timings else None, "candidate": self.selection.candidate,
            "train_config": asdict(self.config), "precision": self.precision,
            "metrics": self.records[-1] if self.records else {},
        }

    def restore(self) -> None:
        ckpt = self.checkpointer.load_last(self.device)
        state = ckpt.payload
        self.epochs = self.requested_epochs or int(state.get("epochs") or self.config.epochs)
        self.plan = BudgetPlan(**state["plan"]) if state.get("plan") else None
        self.timings = Timings(**state["timings"]) if state.get("timings") else None
        self.scheduler = warmup_cosine(self.optimizer, self.epochs * self.steps_per_epoch, self.config.warmup)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # after the scheduler: it restores the current lr
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.step, self.selection = int(state["step"]), Selection(state.get("candidate"))
        self.records = self.checkpointer.read_records(self.step)
        if self.step >= self.epochs * self.steps_per_epoch:
            raise VggExportError(f"nothing to train: {ckpt.path} already has {self.step} steps "
                                 f"({self.epochs} epochs); raise --epochs to continue")
        self.say(f"resumed {ckpt.path} at epoch {self.step // self.steps_per_epoch}, step {self.step}")

    def ship(self) -> TrainResult:
        """best.pt: the final model, or the one picked on validation; then its one test-set score."""
        last_epoch = self.records[-1]["epoch"] if self.records else 0
        weights, selection = self.selection.pick(self.eval_model, last_epoch, self.step)
        shipped = build_model(self.model_config)
        shipped.load_state_dict(weights)
        shipped = shipped.to(self.device, memory_format=self.memory_format)
        scores = self.evaluator(shipped, self.splits.test.first(self.config.eval_samples), "test")
        record = {"record": "test", "epoch": selection["selected_epoch"], "step": self.step, **selection, **scores}
        self.records.append(record)
        self.checkpointer.save_shipped(weights, {**scores, **selection},
                                       {**selection, "step": self.step, "epochs": self.epochs})
        self.checkpointer.write_records(self.records, self.title)
        self.checkpointer.update_manifest(record, self.dataset)
        self.say(shipped_line(record))
        self.say(f"checkpoints in {self.checkpointer.out_dir}")
        self.dist.barrier()
        return TrainResult(self.model_config, self.checkpointer.out_dir, record, self.step, self.epochs)


def train(config: TrainConfig) -> TrainResult:
    return Trainer(config).run()
