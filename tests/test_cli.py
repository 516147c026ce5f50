from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_ARGS, Cli
from vggexport.checkpoint import load_checkpoint
from vggexport.cli import cli


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(cli.commands))])
def test_help(run_cli: Cli, command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from vggexport.cli import cli; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_train_command(run_cli: Cli, tmp_path: Path) -> None:
    # precision pinned: auto picks bf16 on CPUs with native bf16 (tests/test_hardware.py covers auto)
    result = run_cli("train", *TINY_TRAIN_ARGS, "--precision", "fp32", "--max-steps", "5", "--artifacts", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vgg11_bn" / "best.pt").is_file()
    assert "32x32" in result.output and "precision fp32" in result.output


def test_train_no_batch_norm_uses_torchvision_name(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("train", *TINY_TRAIN_ARGS, "--cfg", "b", "--no-batch-norm", "--max-steps", "2",
                     "--artifacts", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vgg13" / "last.pt").is_file()


def test_train_recipe_options_reach_the_checkpoint(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("train", *TINY_TRAIN_ARGS, "--max-steps", "2", "--flip-average", "--erase", "0.5",
                     "--weight-decay", "0.01", "--artifacts", tmp_path)
    assert result.exit_code == 0, result.output
    assert "predictions flip-averaged" in result.output
    ckpt = load_checkpoint(tmp_path / "vgg11_bn" / "last.pt")
    assert ckpt.model_config.flip_average  # on by request, although synthetic data defaults it off
    assert ckpt.payload["train_config"]["erase"] == 0.5 and ckpt.payload["train_config"]["weight_decay"] == 0.01


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--cfg", "Z"], "--cfg"),
        (["--dataset", "imagenet"], "--dataset"),
        (["--image-size", "48"], "multiple of 32"),
        (["--device", "tpu"], "unknown device"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--precision", "fp16", "--device", "cpu"], "fp16"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "100000"], "exceeds"),
        (["--erase", "1.5"], "--erase"),
        (["--weight-decay", "-1"], "--weight-decay"),
    ],
)
def test_train_bad_options(run_cli: Cli, tmp_path: Path, args: list[str], expected: str) -> None:
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    line = one_line_error(run_cli("train", *TINY_TRAIN_ARGS, *args, "--artifacts", tmp_path))
    assert expected in line
    assert not list(tmp_path.rglob("*.pt"))


def test_missing_data_exit_code_2(run_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VGGEXPORT_DATA_DIR", raising=False)
    result = run_cli("train", "--data-dir", tmp_path / "empty", "--artifacts", tmp_path / "out")
    assert result.exit_code == 2
    assert "fashion-mnist not found" in one_line_error(result)


# A tiny run on a generated IDX root: 120 training images, batch 16, 2 steps.
IDX_TRAIN_ARGS = (*TINY_TRAIN_ARGS, "--dataset", "fashion-mnist", "--batch-size", "16", "--max-steps", "2")


def idx_root(root: Path) -> Path:
    from tests.data.test_data import make_idx_root

    return make_idx_root(root, compress=False, n_train=120, n_test=40)


def test_data_dir_typo_is_an_error_not_another_dataset(run_cli: Cli, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The data is under $VGGEXPORT_DATA_DIR, but --data-dir names a folder that does not exist: exit 2, no run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VGGEXPORT_OFFLINE", "1")
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(idx_root(tmp_path / "data")))
    result = run_cli("train", *IDX_TRAIN_ARGS, "--data-dir", "nowhere-xyz", "--artifacts", tmp_path / "out")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert f"not found in {tmp_path / 'nowhere-xyz'} (--data-dir)" in line and "VGGEXPORT_OFFLINE" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "nowhere-xyz").exists()


def test_environment_root_is_used_and_printed(run_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(idx_root(tmp_path / "data")))
    result = run_cli("train", *IDX_TRAIN_ARGS, "--artifacts", tmp_path / "out")
    assert result.exit_code == 0, result.output
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert f"data: Fashion-MNIST train and test splits from {raw} (found)\n" in result.output


def test_environment_root_without_data_is_exit_2(run_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGGEXPORT_OFFLINE", "1")
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(idx_root(tmp_path / "cache" / "vggexport" / "data").parents[1]))
    result = run_cli("train", *IDX_TRAIN_ARGS, "--artifacts", tmp_path / "out")
    assert result.exit_code == 2
    assert f"not found in {tmp_path / 'empty'} ($VGGEXPORT_DATA_DIR)" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_found_data_dir_is_used_and_printed(run_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--data-dir wins over $VGGEXPORT_DATA_DIR: the run reads its files, and says where they are."""
    from tests.data.test_data import make_idx_root

    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(make_idx_root(tmp_path / "env", compress=True, n_train=100)))
    chosen = idx_root(tmp_path / "chosen")
    result = run_cli("train", *IDX_TRAIN_ARGS, "--data-dir", chosen, "--artifacts", tmp_path / "out")
    assert result.exit_code == 0, result.output
    raw = chosen / "FashionMNIST" / "raw"
    assert f"data: Fashion-MNIST train and test splits from {raw} (found)\n" in result.output
    assert "on fashion-mnist" in result.output and str(tmp_path / "env") not in result.output
    manifest = json.loads((tmp_path / "out" / "vgg11_bn" / "manifest.json").read_text())
    assert sorted(manifest["dataset"]["files"]) == sorted(p.name for p in raw.iterdir())


def test_unwritable_artifacts(run_cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    line = one_line_error(run_cli("train", *TINY_TRAIN_ARGS, "--artifacts", blocker / "sub"))
    assert "cannot write" in line


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_resume_corrupt_checkpoint(run_cli: Cli, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "vgg11_bn").mkdir()
    (tmp_path / "vgg11_bn" / "last.pt").write_bytes(content)
    line = one_line_error(run_cli("train", *TINY_TRAIN_ARGS, "--resume", "--artifacts", tmp_path))
    assert "last.pt" in line


def test_resume_foreign_checkpoint(run_cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "vgg11_bn").mkdir()
    torch.save({"weights": torch.ones(2)}, tmp_path / "vgg11_bn" / "last.pt")
    assert "not a vggexport checkpoint" in one_line_error(
        run_cli("train", *TINY_TRAIN_ARGS, "--resume", "--artifacts", tmp_path))


def test_python_dash_m(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "vggexport", "--version"], capture_output=True, text=True, check=True)
    assert "vggexport" in out.stdout
