"""``--name NAME``: one way to find a model for every command (default from --cfg and --batch-norm)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_TRAIN_ARGS, Cli
from tests.serve_process import ServerProcess
from vggexport.checkpoint import load_checkpoint

NAME = "shirts-v2"


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifacts = tmp_path_factory.mktemp("artifacts")
    result = Cli()("train", *TINY_TRAIN_ARGS, "--precision", "fp32", "--name", NAME, "--artifacts", artifacts)
    assert result.exit_code == 0, result.output
    return artifacts


def test_train_writes_into_the_named_folder_and_records_the_name(named: Path) -> None:
    assert not (named / "vgg11_bn").exists()
    assert load_checkpoint(named / NAME / "best.pt").model_config.name == NAME


def test_export_verify_triton_and_serve_find_it_by_name(named: Path, run_cli: Cli) -> None:
    for command in (["export", "--with-preprocessing"], ["verify"], ["triton", "--kind", "cpu"]):
        result = run_cli(*command, "--name", NAME, "--artifacts", named)
        assert result.exit_code == 0, f"{command}: {result.output}"
    assert {p.name for p in (named / NAME).iterdir()} >= {"model.onnx", "model.preprocessing.onnx",
                                                           "model.torchscript.pt", "parity.json"}
    assert json.loads((named / NAME / "parity.json").read_text())["passed"]
    assert (named / "triton" / NAME / "config.pbtxt").is_file()
    import sys

    server = ServerProcess(named / NAME / "model.onnx", cwd=named.parent,
                           command=[sys.executable, "-m", "vggexport", "serve", "--name", NAME, "--artifacts",
                                    str(named), "--provider", "cpu"]).wait_ready()
    try:
        assert httpx.get(f"{server.url}/v2/models/{NAME}", timeout=10).status_code == 200
    finally:
        server.stop()


def test_default_name_still_comes_from_cfg(named: Path, run_cli: Cli) -> None:
    result = run_cli("onnx", "--artifacts", named)  # no --name: vgg11_bn, which does not exist here
    assert result.exit_code == 1 and "vgg11_bn" in result.output


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", "", "x" * 101, "sp ace"])
def test_bad_names_are_refused(bad: str, run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("onnx", "--name", bad, "--artifacts", tmp_path)
    assert result.exit_code == 2 and "invalid model name" in result.output
    assert not list(tmp_path.iterdir())


def test_pipeline_uses_the_name(tmp_path: Path, run_cli: Cli) -> None:
    result = run_cli("pipeline", *TINY_TRAIN_ARGS, "--precision", "fp32", "--name", "piped", "--artifacts",
                     tmp_path / "a", "--no-serve")
    assert result.exit_code == 0, result.output
    assert "piped answered" in result.output and (tmp_path / "a" / "piped" / "parity.json").is_file()


def test_configs_from_older_checkpoints_keep_their_name_and_policy() -> None:
    from vggexport.model import ModelConfig

    old = {"cfg": "D", "batch_norm": False, "in_channels": 1, "num_classes": 10, "image_size": 32, "head": 512,
           "dropout": 0.5, "width": 0.25, "mean": [0.286], "std": [0.353], "class_names": [], "dataset": "mnist"}
    config = ModelConfig.from_dict(old)
    assert (config.name, config.resize_size, config.color_mode) == ("vgg16", 0, "L")
