"""The verify-then-ship gate, end to end through the CLI: serve and triton ship only what verify passed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.serve_process import ServerProcess


@pytest.fixture(scope="module")
def pristine(trained_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model exported once for the module; each test gets its own copy (``exported``)."""
    root = tmp_path_factory.mktemp("record")
    folder = root / "vgg11_bn"
    shutil.copytree(trained_artifacts / "vgg11_bn", folder)
    for stale in ("parity.json", "model.onnx", "model.torchscript.pt"):
        (folder / stale).unlink(missing_ok=True)
    assert Cli()("export", "--artifacts", root).exit_code == 0
    return folder


@pytest.fixture
def exported(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the exported, never verified folder: tests change it at will."""
    folder = tmp_path / "vgg11_bn"
    shutil.copytree(pristine, folder)
    return folder


def refused(server: ServerProcess) -> str:
    assert server.process.wait(timeout=60) == 1
    output = server.process.stdout.read() if server.process.stdout else ""
    assert "Traceback" not in output
    return output


def test_serve_refuses_until_verify_passes(run_cli: Cli, exported: Path) -> None:
    output = refused(ServerProcess(exported / "model.onnx", "--provider", "cpu", gate=True))
    assert "has not been verified" in output and "--allow-unverified" in output
    assert run_cli("verify", "--artifacts", exported.parent).exit_code == 0
    server = ServerProcess(exported / "model.onnx", "--provider", "cpu", gate=True).wait_ready()
    assert server.stop() in (0, -15)
    output = server.process.stdout.read() if server.process.stdout else ""
    record = json.loads((exported / "parity.json").read_text())["files"]
    for name in ("model.onnx", "model.preprocessing.onnx"):  # each session says which bytes it was made from
        assert f"read {name}: " in output and f"sha256 {record[name]['sha256']}" in output, output


def test_allow_unverified_serves_with_a_warning(exported: Path) -> None:
    server = ServerProcess(exported / "model.onnx", "--provider", "cpu", "--allow-unverified", gate=True)
    server.wait_ready()
    server.stop()
    output = server.process.stdout.read() if server.process.stdout else ""
    assert "warning: " in output and "has not been verified" in output


def test_verifying_only_torchscript_does_not_ship_the_onnx(run_cli: Cli, exported: Path) -> None:
    result = run_cli("verify", "--artifacts", exported.parent, "--runtimes", "torchscript")
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
    assert run_cli("verify", "--artifacts", exported.parent).exit_code == 0
    assert run_cli("triton", "--artifacts", exported.parent, "--kind", "cpu").exit_code == 0
    assert run_cli("onnx", "--artifacts", exported.parent, "--opset", "20").exit_code == 0  # other bytes
    output = refused(ServerProcess(exported / "model.onnx", "--provider", "cpu", gate=True))
    assert "changed after it was verified" in output


def test_random_only_or_a_subset_is_not_a_full_verification(run_cli: Cli, exported: Path) -> None:
    """Real images are where a model can misbehave unseen by random tensors: the gate wants them."""
    assert run_cli("verify", "--artifacts", exported.parent, "--random-only").exit_code == 0
    output = refused(ServerProcess(exported / "model.onnx", "--provider", "cpu", gate=True))
    assert "verified on random inputs only" in output
    assert run_cli("verify", "--artifacts", exported.parent, "--samples", "100").exit_code == 0
    triton = run_cli("triton", "--artifacts", exported.parent, "--kind", "cpu")
    assert triton.exit_code == 0 and "warning: " in triton.output and "100 real samples only" in triton.output


def test_a_forged_record_is_refused(run_cli: Cli, exported: Path) -> None:
    """A parity.json the manifest does not list was not written by verify."""
    import hashlib

    digest = hashlib.sha256((exported / "model.onnx").read_bytes()).hexdigest()
    forged = {"format": "vggexport.parity/3", "files": {"model.onnx": {"sha256": digest, "passed": True, "runtimes": [
        {"runtime": "onnxruntime-cpu", "passed": True, "real_data": {"checked": True, "complete": True}}]}}}
    (exported / "parity.json").write_text(json.dumps(forged))
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["artifacts"].pop("parity.json", None)
    (exported / "manifest.json").write_text(json.dumps(manifest))
    triton = run_cli("triton", "--artifacts", exported.parent, "--kind", "cpu")
    assert triton.exit_code == 1 and "was not written by `vggexport verify`" in triton.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="verify runs the CUDA runtimes where CUDA is")
def test_shipping_to_a_gpu_needs_a_cuda_verdict(run_cli: Cli, exported: Path) -> None:
    """Triton's KIND_GPU runs the CUDA provider: a CPU-only verification says nothing of its numbers."""
    assert run_cli("verify", "--artifacts", exported.parent).exit_code == 0  # no GPU here: CPU runtimes only
    gpu = run_cli("triton", "--artifacts", exported.parent, "--kind", "gpu")
    assert gpu.exit_code == 1 and "verified on the CPU only" in gpu.output and "--device cuda" in gpu.output
    forced = run_cli("triton", "--artifacts", exported.parent, "--kind", "gpu", "--allow-unverified")
    assert forced.exit_code == 0 and "verified on the CPU only" in forced.output
    cpu = run_cli("triton", "--artifacts", exported.parent, "--kind", "cpu")
    assert cpu.exit_code == 0 and "warning" not in cpu.output


def test_the_gate_believes_the_record_it_checked_not_a_later_one(exported: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """parity.json swapped for a forged 'passed' right after its manifest check must not be what is read."""
    from vggexport.store import parity_record as record
    from vggexport.errors import VggExportError
    from vggexport.store.fileio import sha256_file
    from vggexport.store.manifest import update_manifest

    model = exported / "model.onnx"
    verdict = {"runtime": "onnxruntime-cpu", "passed": False,
               "real_data": {"checked": True, "samples": 10, "complete": True}}
    entry = {"sha256": sha256_file(model), "passed": False, "runtimes": [verdict]}
    (exported / "parity.json").write_text(json.dumps({"format": record.FORMAT, "files": {"model.onnx": entry}}))
    update_manifest(exported, [exported / "parity.json"])
    forged = {"format": record.FORMAT, "files": {"model.onnx": {**entry, "passed": True,
                                                                "runtimes": [{**verdict, "passed": True}]}}}
    checked = record.check_artifact

    def check_then_swap(source: object) -> None:
        checked(source)
        (exported / "parity.json").write_text(json.dumps(forged))

    monkeypatch.setattr(record, "check_artifact", check_then_swap)
    with pytest.raises(VggExportError, match="failed verification"):
        record.require_verified(model)
    monkeypatch.undo()
    update_manifest(exported, [exported / "parity.json"])  # the forged record, read as checked, would pass
    assert record.require_verified(model).sha256 == entry["sha256"]


def verdicts_of(folder: Path, name: str = "model.onnx") -> dict[str, Any]:
    entry = json.loads((folder / "parity.json").read_text())["files"][name]
    return {v["runtime"]: v for v in entry["runtimes"]}


def test_each_runtime_keeps_its_own_verdict_of_the_same_bytes(run_cli: Cli, exported: Path) -> None:
    """A CPU verify does not erase the CUDA verdict of the same bytes, nor the reverse; each keeps its own
    reference, tolerances and samples. (No GPU here: the CUDA verdict is a real CPU report renamed.)"""
    from tests.verdicts import record_verdict, renamed_report
    from vggexport.store.fileio import sha256_file
    from vggexport.store.parity_record import write_parity

    model, report = exported / "model.onnx", exported.parent / "cpu-report.json"
    verify = ("verify", "--artifacts", exported.parent, "--model", model)
    assert run_cli(*verify, "--report", report).exit_code == 0
    cpu_report = json.loads(report.read_text())
    cpu = verdicts_of(exported)["onnxruntime-cpu"]
    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda", samples=100), model)  # CPU, then CUDA
    both = verdicts_of(exported)
    assert both["onnxruntime-cpu"] == cpu
    cuda = both["onnxruntime-cuda"]
    assert (cpu["reference"], cuda["reference"]) == ({"runtime": "pytorch", "provider": "cpu"},
                                                     {"runtime": "pytorch", "provider": "cuda"})
    assert (cpu["tolerances"]["atol"], cuda["tolerances"]["atol"]) == (1e-4, 5e-3)
    full = cpu["checks"]["real"]["samples"]
    assert cpu["real_data"] == {"checked": True, "samples": full, "complete": True} and full > 100
    assert cuda["real_data"] == {"checked": True, "samples": 100, "complete": False}

    (exported / "parity.json").unlink()  # CUDA, then CPU: a CPU re-verify replaces the CPU verdict only
    record_verdict(renamed_report(cpu_report, "onnxruntime-cuda"), model)
    cuda = verdicts_of(exported)["onnxruntime-cuda"]
    assert set(verdicts_of(exported)) == {"onnxruntime-cuda"} and cuda["real_data"]["complete"]
    result = run_cli(*verify, "--samples", "200")
    assert result.exit_code == 0 and "kept from an earlier run: model.onnx on onnxruntime-cuda" in result.output
    both = verdicts_of(exported)
    assert both["onnxruntime-cuda"] == cuda
    assert both["onnxruntime-cpu"]["real_data"] == {"checked": True, "samples": 200, "complete": False}
    summary = json.loads((exported / "manifest.json").read_text())["parity"]
    assert summary["runtimes"]["model.onnx"] == {"onnxruntime-cuda": True, "onnxruntime-cpu": True}

    # Other bytes (a re-export) drop the file's old verdicts; another checkpoint drops every verdict.
    other = renamed_report(cpu_report, "onnxruntime-cpu")
    other.to_dict()["runtimes"][1]["sha256"] = "f" * 64
    checkpoint = exported / "best.pt"
    write_parity(other, [(model, "onnx", False, "f" * 64)], checkpoint, sha256_file(checkpoint))
    assert set(verdicts_of(exported)) == {"onnxruntime-cpu"}
    write_parity(renamed_report(cpu_report, "onnxruntime-cuda"), [(model, "onnx", False, sha256_file(model))],
                  checkpoint, "0" * 64)
    assert set(verdicts_of(exported)) == {"onnxruntime-cuda"}
