"""The verify-then-ship gate, end to end through the CLI: serve and triton ship only what verify passed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import Cli, ServerProcess


@pytest.fixture
def exported(run_cli: Cli, trained_artifacts: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "vgg11_bn"
    shutil.copytree(trained_artifacts / "vgg11_bn", folder)
    for stale in ("parity.json", "model.onnx", "model.torchscript.pt"):
        (folder / stale).unlink(missing_ok=True)
    assert run_cli("export", "--artifacts", tmp_path).exit_code == 0
    return folder


def refused(server: ServerProcess) -> str:
    assert server.process.wait(timeout=60) == 1
    output = server.process.stdout.read() if server.process.stdout else ""
    assert "Traceback" not in output
    return output


def test_serve_refuses_until_verify_passes(run_cli: Cli, exported: Path) -> None:
    output = refused(ServerProcess(exported / "model.onnx", "--provider", "cpu", gate=True))
    assert "has not been verified" in output and "--allow-unverified" in output
    assert run_cli("verify", "--artifacts", exported.parent, "--random-only").exit_code == 0
    server = ServerProcess(exported / "model.onnx", "--provider", "cpu", gate=True).wait_ready()
    assert server.stop() in (0, -15)


def test_allow_unverified_serves_with_a_warning(exported: Path) -> None:
    server = ServerProcess(exported / "model.onnx", "--provider", "cpu", "--allow-unverified", gate=True)
    server.wait_ready()
    server.stop()
    output = server.process.stdout.read() if server.process.stdout else ""
    assert "warning: " in output and "has not been verified" in output


def test_verifying_only_torchscript_does_not_ship_the_onnx(run_cli: Cli, exported: Path) -> None:
    result = run_cli("verify", "--artifacts", exported.parent, "--random-only", "--runtimes", "torchscript")
    assert result.exit_code == 0, result.output
    record = json.loads((exported / "parity.json").read_text())
    assert set(record["files"]) == {"model.torchscript.pt"}
    triton = run_cli("triton", "--artifacts", exported.parent, "--kind", "cpu")
    assert triton.exit_code == 1 and "model.onnx has not been verified" in triton.output


def test_a_failed_file_is_refused_and_a_re_export_needs_verify_again(run_cli: Cli, exported: Path,
                                                                      tmp_path: Path) -> None:
    from tests.broken_models import BREAKERS, broken_copy

    broken = broken_copy(exported / "model.onnx", exported / "broken.onnx", BREAKERS["wrong-mean"])
    assert run_cli("verify", "--artifacts", exported.parent, "--model", broken, "--random-only").exit_code == 1
    assert "failed verification" in refused(ServerProcess(broken, "--provider", "cpu", gate=True))
    assert run_cli("verify", "--artifacts", exported.parent, "--random-only").exit_code == 0
    assert run_cli("triton", "--artifacts", exported.parent, "--kind", "cpu").exit_code == 0
    assert run_cli("onnx", "--artifacts", exported.parent, "--opset", "20").exit_code == 0  # other bytes
    output = refused(ServerProcess(exported / "model.onnx", "--provider", "cpu", gate=True))
    assert "changed after it was verified" in output
