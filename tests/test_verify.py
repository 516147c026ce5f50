from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import Cli
from vggexport.checkpoint import load_checkpoint
from vggexport.data import load_dataset
from vggexport.spec import ExportSpec
from vggexport.transforms import preprocess
from vggexport.verify import assert_parity

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported_artifacts(trained_artifacts: Path) -> Path:
    from click.testing import CliRunner

    from vggexport.cli import cli

    result = CliRunner().invoke(cli, ["export", "--artifacts", str(trained_artifacts)])
    assert result.exit_code == 0, result.output
    return trained_artifacts


def test_verify_passes_and_writes_report(run_cli: Cli, exported_artifacts: Path) -> None:
    result = run_cli("verify", "--artifacts", exported_artifacts)
    assert result.exit_code == 0, result.output
    assert "all runtimes agree" in result.output
    report = json.loads((exported_artifacts / "vgg11_bn" / "parity.json").read_text())
    assert report["passed"] and {r["runtime"] for r in report["runtimes"]} >= {"pytorch", "torchscript", "onnxruntime-cpu"}
    ort_result = next(r for r in report["runtimes"] if r["runtime"] == "onnxruntime-cpu")
    real = ort_result["checks"]["real"]
    assert real["samples"] == 512 and real["top1_agreement"] == 1.0
    assert real["accuracy"] == real["reference_accuracy"]
    assert set(ort_result["checks"]) == {"random-b1", "random-b7", "random-b64", "real"}
    manifest = json.loads((exported_artifacts / "vgg11_bn" / "manifest.json").read_text())
    assert manifest["parity"]["onnx_sha256"] == manifest["artifacts"]["model.onnx"]["sha256"]  # which file passed


def test_verify_fails_on_a_tampered_onnx(run_cli: Cli, exported_artifacts: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(exported_artifacts / "vgg11_bn" / "model.onnx"))
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    values = onnx.numpy_helper.to_array(weight).copy()
    values += 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    tampered = tmp_path / "vgg11_bn"
    tampered.mkdir()
    for name in ("best.pt", "model.torchscript.pt"):
        (tampered / name).write_bytes((exported_artifacts / "vgg11_bn" / name).read_bytes())
    onnx.save(proto, str(tampered / "model.onnx"))
    result = run_cli("verify", "--artifacts", tmp_path, "--random-only")
    assert result.exit_code == 1
    assert "parity FAILED" in result.output and "onnxruntime-cpu" in result.output
    report = json.loads((tampered / "parity.json").read_text())
    assert not report["passed"]
    torchscript = next(r for r in report["runtimes"] if r["runtime"] == "torchscript")
    assert torchscript["passed"], "one failing runtime must not hide the others' results"


def test_verify_missing_export(run_cli: Cli, trained_artifacts: Path, tmp_path: Path) -> None:
    folder = tmp_path / "vgg11_bn"
    folder.mkdir()
    (folder / "best.pt").write_bytes((trained_artifacts / "vgg11_bn" / "best.pt").read_bytes())
    result = run_cli("verify", "--artifacts", tmp_path, "--random-only", "--runtimes", "onnxruntime-cpu")
    assert result.exit_code == 1 and "run `vggexport onnx` first" in result.output


@pytest.mark.realdata
def test_assert_parity_on_real_images(exported_artifacts: Path, real_data_dir: Path) -> None:
    """How users put our parity check in their own pytest suites."""
    ckpt = load_checkpoint(exported_artifacts / "vgg11_bn" / "best.pt")
    data = load_dataset("fashion-mnist", real_data_dir)
    config = ckpt.model_config
    inputs = preprocess(data.test_images[:500], image_size=config.image_size, mean=config.mean, std=config.std)
    report = assert_parity(ckpt.path, exported_artifacts / "vgg11_bn" / "model.onnx", inputs.numpy(),
                           labels=data.test_labels[:500].numpy(), spec=ExportSpec())
    assert report.runtimes[1].checks["real"].top1_agreement == 1.0


@pytest.mark.realdata
def test_embedding_without_torch(exported_artifacts: Path, real_data_dir: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(exported_artifacts / "vgg11_bn" / "best.pt")
    data = load_dataset("fashion-mnist", real_data_dir)
    images = data.test_images[:64]
    np.save(tmp_path / "images.npy", images[:, 0].numpy())
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "embed_onnx.py"),
                          str(exported_artifacts / "vgg11_bn" / "model.onnx"), str(tmp_path / "images.npy")],
                         capture_output=True, text=True, check=True)
    predicted = [json.loads(line)["index"] for line in out.stdout.splitlines()]
    config = ckpt.model_config
    with torch.no_grad():
        ours = ckpt.build_model()(preprocess(images, image_size=32, mean=config.mean, std=config.std)).argmax(1)
    assert predicted == ours.tolist()
