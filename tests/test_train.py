from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from vggexport.checkpoint import load_checkpoint, save_checkpoint
from vggexport.errors import VggExportError
from vggexport.train import TrainConfig, learning_rate, train

TINY = {"dataset": "synthetic", "width": 0.0625, "head": 32, "batch_size": 64, "device": "cpu"}


def test_learning_rate_schedule() -> None:
    peak, total = 0.1, 100
    lrs = [learning_rate(s, total, peak, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(peak)
    assert lrs[-1] < 0.001 and lrs.index(max(lrs)) == 9


def test_training_writes_every_artifact(tmp_path: Path) -> None:
    result = train(TrainConfig(**TINY, epochs=2, artifacts=str(tmp_path)))
    out = tmp_path / "vgg11_bn"
    assert result.out_dir == out
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.model_config.dataset == "synthetic" and ckpt.model_config.class_names[0] == "class_0"
    assert not ckpt.model_config.flip_average  # synthetic classes are not mirror-symmetric
    assert ckpt.payload["train_config"]["epochs"] == 2
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_checkpoint_rebuilds_model_alone(tmp_path: Path) -> None:
    train(TrainConfig(**TINY, epochs=1, max_steps=3, erase=0.5, flip_average=True, artifacts=str(tmp_path)))
    ckpt = load_checkpoint(tmp_path / "vgg11_bn" / "last.pt")
    model = ckpt.build_model()
    assert not model.training and ckpt.model_config.flip_average
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(TrainConfig(**TINY, epochs=2, deterministic=True, artifacts=str(tmp_path / "a")))
    train(TrainConfig(**TINY, epochs=2, max_steps=32, deterministic=True, artifacts=str(tmp_path / "b")))
    resumed = train(TrainConfig(**TINY, epochs=2, resume=True, deterministic=True, artifacts=str(tmp_path / "b")))
    assert straight.steps == resumed.steps == 64
    a = load_checkpoint(tmp_path / "a" / "vgg11_bn" / "last.pt").payload["model"]
    b = load_checkpoint(tmp_path / "b" / "vgg11_bn" / "last.pt").payload["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert len((tmp_path / "b" / "vgg11_bn" / "metrics.jsonl").read_text().splitlines()) == 2


def test_interrupted_checkpoint_write_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, model_config=tiny_config(), state={"model": {"w": torch.ones(3)}})
    before = target.read_bytes()
    with pytest.raises(Exception):
        # a lambda cannot be pickled: torch.save fails after it has started writing
        save_checkpoint(target, model_config=tiny_config(), state={"model": {"w": torch.zeros(10**6)}, "x": lambda: 0})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(VggExportError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_foreign_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    with pytest.raises(VggExportError, match="not a vggexport checkpoint"):
        load_checkpoint(path)


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(VggExportError, match="run `vggexport train` first"):
        train(TrainConfig(**TINY, resume=True, artifacts=str(tmp_path)))


def test_resume_with_other_architecture_is_refused(tmp_path: Path) -> None:
    train(TrainConfig(**TINY, epochs=1, max_steps=2, artifacts=str(tmp_path)))
    with pytest.raises(VggExportError, match="different model"):
        train(TrainConfig(**{**TINY, "head": 64}, epochs=2, resume=True, artifacts=str(tmp_path)))


def test_resume_may_switch_flip_average(tmp_path: Path) -> None:
    # A checkpoint from before flip averaging (or with it off) resumes: the flip changes no weight.
    train(TrainConfig(**TINY, epochs=1, max_steps=2, flip_average=False, artifacts=str(tmp_path)))
    result = train(TrainConfig(**TINY, epochs=2, max_steps=4, flip_average=True, resume=True, artifacts=str(tmp_path)))
    assert result.steps == 4
    assert load_checkpoint(tmp_path / "vgg11_bn" / "last.pt").model_config.flip_average


@pytest.mark.realdata
def test_short_real_training_beats_chance(real_data_dir: Path, tmp_path: Path) -> None:
    result = train(TrainConfig(data_dir=str(real_data_dir), width=0.125, head=64, epochs=1, max_steps=150,
                               device="cpu", artifacts=str(tmp_path)))
    assert result.final["test_accuracy"] > 0.6  # chance is 0.1
    assert result.model_config.flip_average  # Fashion-MNIST is mirror-symmetric: the paper's test-time flip is on
