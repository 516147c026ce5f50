"""The training parts alone: schedule, time budget, recipes, splits, batch source, evaluator, checkpointer."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_config
from vggexport.data.synthetic import make_synthetic
from vggexport.errors import VggExportError
from vggexport.model import ModelConfig, build_model
from vggexport.training.batches import Augmentation, BatchSource, Split, make_splits, stratified_holdout
from vggexport.training.budget import out_of_time
from vggexport.training.checkpointer import Checkpointer
from vggexport.training.config import TrainConfig, parse_duration, resolve
from vggexport.training.evaluator import Evaluator, eval_batch_size, soft_cross_entropy
from vggexport.training.schedule import Timings, WarmupCosine, plan_epochs, warmup_cosine
from vggexport.transforms import preprocess

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_warmup_cosine_shape() -> None:
    curve = WarmupCosine(total_steps=100, warmup=0.1)
    factors = [curve(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and max(factors) == pytest.approx(1.0) and factors.index(1.0) == 9
    assert factors[-1] < 0.001 and all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_scheduler_state_resumes_on_the_same_curve() -> None:
    def fresh() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        return optimizer, warmup_cosine(optimizer, 50, 0.2)

    optimizer, scheduler = fresh()
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    saved = (optimizer.state_dict(), scheduler.state_dict())
    optimizer2, scheduler2 = fresh()
    optimizer2.load_state_dict(saved[0])
    scheduler2.load_state_dict(saved[1])
    for _ in range(20):
        assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        for o, s in ((optimizer, scheduler), (optimizer2, scheduler2)):
            o.step()
            s.step()


TIMINGS = Timings(step_s=0.1, eval_image_s=0.001, save_s=1.0)


def test_plan_fills_the_budget_with_whole_epochs() -> None:
    plan = plan_epochs(600, 10, TIMINGS, steps_per_epoch=468, val_images=0, test_images=10_000)
    # 600 - 10 elapsed - 30 margin - (10 s test + 1 s save) = 549 s; an epoch is 46.8 + 1 s
    assert plan.epochs == 11 and plan.epoch_s == pytest.approx(47.8) and plan.margin_s == 30
    fast = plan_epochs(600, 10, dataclasses.replace(TIMINGS, step_s=0.025), steps_per_epoch=468, val_images=0,
                       test_images=10_000)
    assert fast.epochs > 3 * plan.epochs  # a faster machine trains more epochs in the same budget
    with_val = plan_epochs(600, 10, TIMINGS, steps_per_epoch=468, val_images=5000, test_images=10_000)
    assert with_val.epochs < plan.epochs  # validation each epoch costs time too
    assert "repeat with --epochs 11" in plan.describe()


def test_a_slowed_machine_stops_before_the_budget_ends() -> None:
    plan = plan_epochs(600, 10, TIMINGS, steps_per_epoch=468, val_images=0, test_images=10_000)
    assert not out_of_time(plan, elapsed_s=300, last_epoch_s=47.8)  # on schedule
    assert out_of_time(plan, elapsed_s=560, last_epoch_s=47.8)  # 40 s left: one more epoch would overrun
    assert not out_of_time(None, elapsed_s=10_000, last_epoch_s=1)  # no budget, no valve


def test_plan_trains_at_least_one_epoch() -> None:
    assert plan_epochs(10, 9, TIMINGS, steps_per_epoch=1000, val_images=0, test_images=10).epochs == 1


@pytest.mark.parametrize(("text", "seconds"),
                         [("600", 600), ("90s", 90), ("10m", 600), ("1.5h", 5400), (" 2 min", 120)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "-5", "5d", "nan", "1e400"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(VggExportError, match=f"cannot read {re.escape(repr(text))} as a duration: use seconds"):
        parse_duration(text)


def test_parse_duration_refuses_zero() -> None:
    with pytest.raises(VggExportError, match="a time budget must be positive, got '0'"):
        parse_duration("0")


def test_recipes_fill_only_what_is_unset() -> None:
    cpu = resolve(TrainConfig(), CPU)
    assert (cpu.image_size, cpu.width, cpu.batch_size, cpu.epochs, cpu.time_budget) == (32, 0.25, 128, 8, None)
    assert (cpu.lr, cpu.weight_decay, cpu.ema) == (3e-3, 0.05, 0.0)
    cuda = resolve(TrainConfig(), CUDA)
    assert (cuda.image_size, cuda.width) == (224, 1.0)
    fast = resolve(TrainConfig(recipe="fast", batch_size=512), CUDA)
    assert (fast.image_size, fast.width, fast.batch_size, fast.time_budget, fast.epochs) == (32, 1.0, 512, 50, None)
    assert fast.ema > 0 and fast.crop_padding > 0 and fast.erase > 0
    assert resolve(TrainConfig(recipe="fast", epochs=30), CUDA).time_budget is None  # explicit epochs win
    budget = resolve(TrainConfig(time_budget=600), CPU)
    assert budget.epochs is None and budget.time_budget == 600
    with pytest.raises(VggExportError, match="exclude each other"):
        resolve(TrainConfig(epochs=3, time_budget=60), CPU)
    with pytest.raises(VggExportError, match="unknown recipe"):
        resolve(TrainConfig(recipe="slow"), CPU)


def test_stratified_holdout_keeps_class_shares() -> None:
    labels = torch.cat([torch.full((600,), 0), torch.full((300,), 1), torch.full((100,), 2)])[torch.randperm(1000)]
    held = stratified_holdout(labels, 100, seed=3)
    assert len(set(held.tolist())) == 100
    counts = torch.bincount(labels[held], minlength=3).tolist()
    assert all(abs(c - e) <= 1 for c, e in zip(counts, [60, 30, 10])), counts
    assert torch.equal(held, stratified_holdout(labels, 100, seed=3))
    assert not torch.equal(held, stratified_holdout(labels, 100, seed=4))


def test_splits_are_disjoint_and_test_is_untouched() -> None:
    data = make_synthetic(train=300, test=50)
    splits = make_splits(data, val_size=60, seed=0, batch_size=16)
    assert len(splits.train) == 240 and len(splits.val) == 60 and torch.equal(splits.test.images, data.test_images)
    rows = {tuple(x.flatten().tolist()) for x in splits.train.images}
    assert not any(tuple(x.flatten().tolist()) in rows for x in splits.val.images)
    assert make_splits(data, val_size=0, seed=0, batch_size=16).val is None
    with pytest.raises(VggExportError, match="fewer than one batch"):
        make_splits(data, val_size=290, seed=0, batch_size=16)


def source(split: Split, rank: int = 0, world_size: int = 1, erase: float = 0.5) -> BatchSource:
    augmentation = Augmentation(32, (0.5,), (0.25,), hflip=True, crop_padding=2, erase=erase)
    return BatchSource(split, batch_size=16, seed=7, augmentation=augmentation, rank=rank, world_size=world_size)


def test_batch_source_resumes_mid_epoch_with_the_same_batches() -> None:
    data = make_synthetic(train=100, test=10)
    full = list(source(Split(data.train_images, data.train_labels)).epoch(3))
    tail = list(source(Split(data.train_images, data.train_labels)).epoch(3, start=4))
    assert len(full) == 6 and len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = next(source(Split(data.train_images, data.train_labels)).indices(4))
    assert not torch.equal(next(source(Split(data.train_images, data.train_labels)).indices(3)), other_epoch)


def test_ranks_split_each_global_batch_and_draw_their_own_augmentation() -> None:
    data = make_synthetic(train=64, test=10)
    split = Split(data.train_images, data.train_labels)
    one = next(source(split).indices(0))
    halves = [next(source(split, rank, 2).indices(0)) for rank in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == sorted(one.tolist())
    # Every image identical: rank 0's and rank 1's batches then differ only by their random streams.
    copies = Split(data.train_images[:1].repeat(64, 1, 1, 1), data.train_labels[:1].repeat(64))
    x0, x1 = (next(source(copies, rank, 2).epoch(0))[0] for rank in (0, 1))
    assert x0.shape == x1.shape == (8, 1, 32, 32) and not torch.equal(x0, x1)
    assert torch.equal(x0, next(source(copies, 0, 2).epoch(0))[0])  # and each stream is reproducible


def test_batch_size_must_divide_among_processes() -> None:
    data = make_synthetic(train=64, test=10)
    with pytest.raises(VggExportError, match="must divide among 3"):
        source(Split(data.train_images, data.train_labels), 0, 3)


def test_soft_cross_entropy_matches_the_index_form() -> None:
    logits, labels = torch.randn(9, 5), torch.randint(0, 5, (9,))
    for smoothing in (0.0, 0.1):
        torch.testing.assert_close(soft_cross_entropy(logits, labels, smoothing),
                                   F.cross_entropy(logits, labels, label_smoothing=smoothing))


def test_evaluation_is_the_same_in_any_batch_size() -> None:
    config = tiny_config(flip_average=True)
    torch.manual_seed(0)
    model = build_model(config)
    data = make_synthetic(test=103)
    split = Split(data.test_images, data.test_labels)
    scores = [Evaluator(config, device=CPU, batch_size=b)(model, split, "test") for b in (1, 7, 1000)]
    assert all(s["test_samples"] == 103 for s in scores)
    # An untrained model's top two log-probabilities (about -2.3) are ~1e-5 apart, and a batch size may change
    # a convolution's summation order, so the last bits: only a near-tie (within 2e-6, some 8 float32 steps
    # at 2.3) may change class with it. Every other sample must be scored alike in every batch size.
    with torch.no_grad():
        model.eval()
        logits = model(preprocess(data.test_images, image_size=config.image_size, mean=config.mean, std=config.std))
    top2 = logits.topk(2, dim=1).values
    near_ties = int((top2[:, 0] - top2[:, 1] < 2e-6).sum())
    assert near_ties < 10  # the allowance stays small: most samples decide the check
    correct = [round(s["test_accuracy"] * 103) for s in scores]
    assert max(correct) - min(correct) <= near_ties, (correct, near_ties)
    assert scores[0]["test_loss"] == pytest.approx(scores[2]["test_loss"], rel=1e-6)


def test_evaluation_restores_training_mode() -> None:
    model = build_model(tiny_config()).train()
    data = make_synthetic(test=5)
    Evaluator(tiny_config(), device=CPU)(model, Split(data.test_images, data.test_labels), "val")
    assert model.training


SEED_CONFIG = ModelConfig(image_size=224, width=1.0, head=512, flip_average=True)


def test_eval_batches_fit_the_seed_configuration_on_a_cpu() -> None:
    batch = eval_batch_size(SEED_CONFIG, CPU, available_bytes=24 << 30)
    # the first conv's output (64 x 224 x 224 floats) for both views, with slack, under 1 GiB
    assert 1 <= batch <= 16
    assert batch * 2 * 64 * 224 * 224 * 4 * 4 <= 1 << 30
    assert eval_batch_size(SEED_CONFIG, CPU, available_bytes=1 << 30) < batch  # a smaller machine, smaller batches
    assert eval_batch_size(tiny_config(), CPU, available_bytes=24 << 30) == 1024  # tiny models: the cap


def test_eval_batches_on_cuda_stay_under_cudnn_element_limit() -> None:
    batch = eval_batch_size(SEED_CONFIG, CUDA, available_bytes=140 << 30)
    assert batch * 2 * 64 * 224 * 224 < 2**31
    assert eval_batch_size(SEED_CONFIG, CUDA, available_bytes=4 << 30) >= 1  # the seed's 4 GB GPU


def test_checkpointer_alone(tmp_path: Path) -> None:
    config = tiny_config()
    writer = Checkpointer(tmp_path, config, run_info={"train_config": {"epochs": 1}, "precision": "fp32"})
    model = build_model(config)
    writer.save_state({"model": model.state_dict(), "step": 12})
    records = [{"record": "epoch", "epoch": 1, "step": 8, "train_loss": 1.0, "train_accuracy": 0.5},
               {"record": "epoch", "epoch": 2, "step": 12, "partial": True, "train_loss": 0.9, "train_accuracy": 0.6},
               {"record": "test", "epoch": 2, "step": 12, "test_loss": 0.8, "test_accuracy": 0.7}]
    writer.write_records(records, "tiny")
    writer.save_shipped(model.state_dict(), {"test_accuracy": 0.7}, {"selected_on": "final"})
    assert writer.load_last("cpu").payload["step"] == 12
    assert [r["epoch"] for r in writer.read_records(up_to_step=12)] == [1]  # the stop's partial epoch is redone
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "best.pt").is_file()
    with pytest.raises(VggExportError, match="different model"):
        Checkpointer(tmp_path, tiny_config(head=64)).load_last("cpu")
    other = tmp_path / "rank1"
    other.mkdir()
    Checkpointer(other, config, is_main=False).save_state({"model": model.state_dict()})
    assert not list(other.iterdir()), "only rank 0 writes"
