"""model.pt2 (torch.export): round trip against eager, metadata, the runner, and hostile files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import Cli, Exported, tiny_config
from vggexport.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vggexport.errors import VggExportError
from vggexport.export.pt2 import export_exported_program, load_exported_program
from vggexport.model import build_model
from vggexport.backend.pytorch import ExportedProgramRunner
from vggexport.backend.registry import make_runner
from vggexport.export.spec import ExportSpec
from vggexport.verify.run import assert_parity

CLASSES = tuple(f"c{i}" for i in range(10))


def make_checkpoint(folder: Path, **overrides: object) -> Checkpoint:
    torch.manual_seed(0)
    config = tiny_config(class_names=CLASSES, **overrides)
    state = {"model": build_model(config).state_dict(), "metrics": {"test_accuracy": 0.5}}
    return load_checkpoint(save_checkpoint(folder / "best.pt", model_config=config, state=state))


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "flip-averaged"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    folder = tmp_path_factory.mktemp("pt2")
    ckpt = make_checkpoint(folder, flip_average=request.param)
    return ckpt, export_exported_program(ckpt, folder / "model.pt2")


def test_round_trip_matches_eager_at_every_batch(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    report = assert_parity(ckpt.path, ExportedProgramRunner(path), input_shape=(1, 32, 32), spec=ExportSpec())
    checks = report.runtimes[1].checks
    assert {"random-b1", "random-b7", "random-b64"} <= set(checks)
    assert all(c.max_abs <= 1e-5 for c in checks.values())


def test_metadata_matches_torchscript_extra_files(exported: tuple[Checkpoint, Path],
                                                  request: pytest.FixtureRequest) -> None:
    """The .pt2's metadata equals what TorchScript's file holds, and the facts the checkpoint knows.

    Both are read back by torch's own loaders, and the expected values come from the checkpoint file
    (its sha256 by hashlib, its config and score as saved), not from the function that wrote them.
    """
    import hashlib

    from vggexport.export.torchscript import export_torchscript

    ckpt, path = exported
    program, metadata = load_exported_program(path)
    assert isinstance(program, torch.export.ExportedProgram)
    scripted = export_torchscript(ckpt, path.parent / "model.torchscript.pt")
    extra = {"metadata.json": "", "model_config.json": ""}
    torch.jit.load(str(scripted), _extra_files=extra)
    assert metadata == json.loads(extra["metadata.json"])
    saved = torch.load(ckpt.path, map_location="cpu", weights_only=True)["model_config"]
    saved = json.loads(json.dumps(saved))  # the checkpoint pickles tuples; JSON has lists
    assert json.loads(metadata["model_config"]) == json.loads(extra["model_config.json"]) == saved
    assert metadata["checkpoint_sha256"] == hashlib.sha256(ckpt.path.read_bytes()).hexdigest()
    assert json.loads(metadata["class_names"]) == list(CLASSES) and metadata["test_accuracy"] == "0.500000"
    assert (metadata["image_size"], metadata["in_channels"]) == ("32", "1")
    assert json.loads(metadata["model_config"])["flip_average"] is request.node.callspec.params["exported"]


def test_batch_is_dynamic(exported: tuple[Checkpoint, Path]) -> None:
    program, _ = load_exported_program(exported[1])
    (shape,) = [spec.arg for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    batch = program.graph.find_nodes(op="placeholder", target=shape.name)[0].meta["val"].shape[0]
    assert isinstance(batch, torch.SymInt)


def test_make_runner_and_wrong_shape(exported: tuple[Checkpoint, Path]) -> None:
    _, path = exported
    runner = make_runner("torch-export", path)
    assert runner.name == "torch-export" and isinstance(runner, ExportedProgramRunner)
    with runner:
        assert runner.infer(np.zeros((3, 1, 32, 32), np.float32)).shape == (3, 10)
        with pytest.raises(VggExportError, match=r"does not match the program's \(batch, 1, 32, 32\)"):
            runner.infer(np.zeros((2, 3, 32, 32), np.float32))


def test_export_command_writes_pt2_and_verify_checks_it(exported_tiny: Exported, run_cli: Cli,
                                                        tmp_path: Path) -> None:
    # exported_tiny is `vggexport export` on the trained model (exit code 0 asserted there); verify writes: a copy
    assert "model.pt2" in exported_tiny.output, exported_tiny.output
    shutil.copytree(exported_tiny.folder, tmp_path / "vgg11_bn")
    manifest = json.loads((tmp_path / "vgg11_bn" / "manifest.json").read_text())
    assert "model.pt2" in manifest["artifacts"]
    result = run_cli("verify", "--artifacts", tmp_path, "--runtimes", "torch-export", "--random-only")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "vgg11_bn" / "parity.json").read_text())
    verdicts = record["files"]["model.pt2"]["runtimes"]
    assert [v["runtime"] for v in verdicts] == ["torch-export"] and verdicts[0]["passed"]
    assert set(record["files"]) == {"model.pt2"}  # only what that runtime runs was verified


def foreign_program(path: Path) -> None:
    program = torch.export.export(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),))
    torch.export.save(program, path)


@pytest.mark.parametrize("damage, message", [
    ("missing", "no torch.export model"),
    ("garbage", "not a readable torch.export program"),
    ("truncated", "not a readable torch.export program"),
    ("empty", "not a readable torch.export program"),
    ("foreign", "not a vggexport export"),
    ("flipped byte", "has changed since vggexport wrote it"),
])
def test_hostile_files_fail_in_one_line(exported: tuple[Checkpoint, Path], tmp_path: Path, damage: str,
                                        message: str, capfd: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "model.pt2"
    data = exported[1].read_bytes()
    if damage == "garbage":
        target.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    elif damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "foreign":
        foreign_program(target)
    elif damage == "flipped byte":
        shutil.copy(exported[1], target)
        shutil.copy(exported[1].parent / "manifest.json", tmp_path / "manifest.json")
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0xFF
        target.write_bytes(bytes(flipped))
    with pytest.raises(VggExportError, match=message) as error:
        load_exported_program(target)
    assert "\n" not in str(error.value)
    assert "Traceback" not in capfd.readouterr().err


def test_runner_reports_a_bad_file_as_its_error(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"not a zip")
    with pytest.raises(VggExportError, match="not a readable torch.export program"):
        make_runner("torch-export", tmp_path / "model.pt2").activate()


@pytest.mark.gpu
def test_cuda_runner_matches_eager(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    runner = make_runner("torch-export-cuda", path)
    assert runner.name == "torch-export-cuda"
    report = assert_parity(ckpt.path, runner, input_shape=(1, 32, 32))
    assert report.runtimes[1].provider.startswith("cuda")
