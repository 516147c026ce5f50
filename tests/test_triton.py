from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format

from tests.conftest import Cli
from tests.test_export import make_checkpoint
from vggexport.errors import VggExportError
from vggexport.export import export_onnx
from vggexport.spec import ExportSpec
from vggexport.triton import TritonConfig, preferred_batch_sizes, write_repository


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """An exported model that verify has really passed (random inputs)."""
    from vggexport.verification import VerifyOptions, verify

    folder = tmp_path / "vgg11_bn"
    folder.mkdir()
    export_onnx(make_checkpoint(folder), folder / "model.onnx", ExportSpec())
    assert verify(folder / "best.pt", folder, ExportSpec(), VerifyOptions(random_only=True)).passed
    return folder


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_config_parses_with_tritons_schema_and_matches_the_onnx(model_dir: Path, tmp_path: Path, kind: str) -> None:
    from tritonclient.grpc import model_config_pb2

    target = write_repository(model_dir, tmp_path / "repo", TritonConfig(max_batch_size=32, instances=2, kind=kind))
    config = text_format.Parse((target / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "vgg11_bn" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == getattr(model_config_pb2.ModelInstanceGroup, f"KIND_{kind.upper()}")
    graph = onnx.load(str(target / "1" / "model.onnx")).graph
    for declared, actual in ((config.input[0], graph.input[0]), (config.output[0], graph.output[0])):
        dims = actual.type.tensor_type.shape.dim
        assert declared.name == actual.name
        assert declared.data_type == model_config_pb2.TYPE_FP32
        assert dims[0].dim_param, "first dimension must be dynamic for max_batch_size > 0"
        assert list(declared.dims) == [d.dim_value for d in dims[1:]]
    assert (target / "labels.txt").read_text().splitlines() == [f"c{i}" for i in range(10)]


def test_unverified_model_is_refused(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (model_dir / "parity.json").unlink()
    with pytest.raises(VggExportError, match="has not been verified"):
        write_repository(model_dir, tmp_path / "repo", TritonConfig())
    assert write_repository(model_dir, tmp_path / "repo", TritonConfig(), allow_unverified=True).is_dir()
    assert "warning: " in capsys.readouterr().err


def test_failed_verification_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from vggexport.checkpoint import load_checkpoint, save_checkpoint
    from vggexport.verification import VerifyOptions, verify

    ckpt = load_checkpoint(model_dir / "best.pt")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt.payload["model"].items()}
    other = save_checkpoint(tmp_path / "other.pt", model_config=ckpt.model_config, state={"model": weights})
    assert not verify(other, model_dir, ExportSpec(), VerifyOptions(random_only=True)).passed
    with pytest.raises(VggExportError, match="failed verification"):
        write_repository(model_dir, tmp_path / "repo", TritonConfig())


def test_edited_parity_report_is_refused(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "parity.json").write_text("{not json")
    with pytest.raises(VggExportError, match="changed since vggexport wrote it"):
        write_repository(model_dir, tmp_path / "repo", TritonConfig())


def test_onnx_re_exported_after_verify_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from vggexport.checkpoint import load_checkpoint

    export_onnx(load_checkpoint(model_dir / "best.pt"), model_dir / "model.onnx", ExportSpec(opset=20))
    with pytest.raises(VggExportError, match="changed after it was verified"):
        write_repository(model_dir, tmp_path / "repo", TritonConfig())


def test_preferred_batch_sizes() -> None:
    assert preferred_batch_sizes(64) == [16, 32, 64] and preferred_batch_sizes(3) == [3]


def test_triton_command(run_cli: Cli, model_dir: Path) -> None:
    result = run_cli("triton", "--artifacts", model_dir.parent, "--kind", "cpu")
    assert result.exit_code == 0, result.output
    assert (model_dir.parent / "triton" / "vgg11_bn" / "config.pbtxt").is_file()
    missing = run_cli("triton", "--artifacts", model_dir.parent / "nowhere")
    assert missing.exit_code == 1 and "run `vggexport onnx` first" in missing.output
