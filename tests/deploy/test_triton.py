from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format

from tests.broken_models import replace_hostile
from tests.conftest import Cli
from vggexport.errors import VggExportError
from vggexport.export.onnx import export_onnx
from vggexport.export.spec import ExportSpec
from vggexport.deploy.triton import TritonConfig, preferred_batch_sizes, write_repository


@pytest.fixture(scope="module")
def verified_dir(verified_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported model that verify has really passed (random inputs, the synthetic test split), with the
    CUDA verdict KIND_GPU needs: once per module, only read (``model_dir`` is the copy tests may change)."""
    import json

    from tests.verdicts import record_verdict, renamed_report

    folder = Path(shutil.copytree(verified_tiny, tmp_path_factory.mktemp("triton") / "vgg11_bn"))
    report = json.loads((verified_tiny.parent / "cpu-report.json").read_text())
    # KIND_GPU ships only what a CUDA runtime passed: that verdict as a GPU's verify would record it.
    record_verdict(renamed_report(report, "onnxruntime-cuda"), folder / "model.onnx")
    return folder


@pytest.fixture
def model_dir(verified_dir: Path, tmp_path: Path) -> Path:
    """A private copy of ``verified_dir``: most tests here break, replace or add files."""
    return Path(shutil.copytree(verified_dir, tmp_path / "vgg11_bn"))


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_config_parses_with_tritons_schema_and_matches_the_onnx(model_dir: Path, tmp_path: Path, kind: str) -> None:
    from tritonclient.grpc import model_config_pb2

    config = TritonConfig(max_batch_size=32, instances=2, kind=kind)
    target = write_repository(model_dir / "model.onnx", tmp_path / "repo", config)
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
        write_repository(model_dir / "model.onnx", tmp_path / "repo", TritonConfig())
    assert write_repository(model_dir / "model.onnx", tmp_path / "repo", TritonConfig(), allow_unverified=True).is_dir()
    assert "warning: " in capsys.readouterr().err


def test_failed_verification_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from vggexport.checkpoint import load_checkpoint, save_checkpoint
    from vggexport.verify.command import VerifyOptions, verify

    ckpt = load_checkpoint(model_dir / "best.pt")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt.payload["model"].items()}
    other = save_checkpoint(tmp_path / "other.pt", model_config=ckpt.model_config, state={"model": weights})
    assert not verify(other, model_dir, ExportSpec(), VerifyOptions()).passed
    with pytest.raises(VggExportError, match="failed verification"):
        write_repository(model_dir / "model.onnx", tmp_path / "repo", TritonConfig())


def test_edited_parity_report_is_refused(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "parity.json").write_text("{not json")
    with pytest.raises(VggExportError, match="changed since vggexport wrote it"):
        write_repository(model_dir / "model.onnx", tmp_path / "repo", TritonConfig())


def test_onnx_re_exported_after_verify_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from vggexport.checkpoint import load_checkpoint

    export_onnx(load_checkpoint(model_dir / "best.pt"), model_dir / "model.onnx", ExportSpec(opset=20))
    with pytest.raises(VggExportError, match="changed after it was verified"):
        write_repository(model_dir / "model.onnx", tmp_path / "repo", TritonConfig())


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "", "x" * 200, 'q"uote', "new\nline"])
def test_unsafe_model_names_are_refused(model_dir: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(VggExportError, match="not a safe Triton model name"):
        write_repository(model_dir / "model.onnx", tmp_path / "repo", TritonConfig(name=name))
    assert not (tmp_path / "repo").exists()


def test_metadata_name_is_validated_and_the_config_escapes_strings(model_dir: Path, tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    proto = onnx.load(str(model_dir / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "model_name":
            prop.value = '../../etc" }\nplatform: "evil'
    onnx.save(proto, str(hostile / "model.onnx"))
    with pytest.raises(VggExportError, match="metadata is not a safe Triton model name"):
        write_repository(hostile / "model.onnx", tmp_path / "repo", TritonConfig(), allow_unverified=True)
    target = write_repository(hostile / "model.onnx", tmp_path / "repo", TritonConfig(name="safe"),
                              allow_unverified=True)
    config = text_format.Parse((target / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "safe" and target == tmp_path / "repo" / "safe"


def test_queue_delay_warmup_and_the_preprocessing_variant(model_dir: Path, tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    from tests.export.test_export import make_checkpoint

    export_onnx(make_checkpoint(model_dir), model_dir / "model.preprocessing.onnx", ExportSpec(), preprocessing=True)
    target = write_repository(model_dir / "model.preprocessing.onnx", tmp_path / "repo",
                              TritonConfig(name="vgg11_bn_pixels", max_queue_delay_us=2500), allow_unverified=True)
    config = text_format.Parse((target / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8 and list(config.input[0].dims) == [1, -1, -1]
    assert [o.name for o in config.output] == ["logits"]
    warm = config.model_warmup[0]
    assert warm.batch_size == 1 and list(warm.inputs["input"].dims) == [1, 32, 32] and warm.inputs["input"].zero_data
    plain = write_repository(model_dir / "model.onnx", tmp_path / "repo2", TritonConfig(warmup=False))
    parsed = text_format.Parse((plain / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert not parsed.model_warmup


def test_preferred_batch_sizes() -> None:
    assert preferred_batch_sizes(64) == [16, 32, 64] and preferred_batch_sizes(3) == [3]


def test_triton_command(run_cli: Cli, model_dir: Path) -> None:
    result = run_cli("triton", "--artifacts", model_dir.parent, "--kind", "cpu")
    assert result.exit_code == 0, result.output
    assert (model_dir.parent / "triton" / "vgg11_bn" / "config.pbtxt").is_file()
    missing = run_cli("triton", "--artifacts", model_dir.parent / "nowhere")
    assert missing.exit_code == 1 and "run `vggexport onnx` first" in missing.output
    fp16 = run_cli("triton", "--artifacts", model_dir.parent, "--precision", "fp16")
    assert fp16.exit_code == 1 and "model.fp16.onnx" in fp16.output


def test_the_repository_gets_the_bytes_the_gate_checked(model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """model.onnx in the repository has the recorded sha256, even when the file is swapped right after the check."""
    import json
    import shutil

    from tests.broken_models import BREAKERS, broken_copy
    from vggexport.deploy import triton
    from vggexport.store.fileio import sha256_file

    recorded = json.loads((model_dir / "parity.json").read_text())["files"]["model.onnx"]["sha256"]
    target = write_repository(model_dir / "model.onnx", tmp_path / "repo", TritonConfig(kind="cpu"))
    assert sha256_file(target / "1" / "model.onnx") == recorded
    broken = broken_copy(model_dir / "model.onnx", tmp_path / "broken.onnx", BREAKERS["altered-weights"])
    checked = triton.check_verified

    def check_then_swap(*args: object, **kwargs: object) -> object:
        result = checked(*args, **kwargs)  # type: ignore[arg-type]
        shutil.copyfile(broken, model_dir / "model.onnx")  # what a second read of the path would copy
        return result

    monkeypatch.setattr(triton, "check_verified", check_then_swap)
    again = write_repository(model_dir / "model.onnx", tmp_path / "repo2", TritonConfig(kind="cpu"))
    assert sha256_file(model_dir / "model.onnx") != recorded  # the swap happened
    assert sha256_file(again / "1" / "model.onnx") == recorded


def hostile_onnx(folder: Path, case: str) -> Path:
    (folder / "manifest.json").unlink()  # a foreign folder: only the file itself speaks
    return replace_hostile(folder / "model.onnx", case)


@pytest.mark.parametrize("case, phrase", [("directory", "no ONNX model at"), ("symlink loop", "no ONNX model at"),
                                          ("empty", "is empty"), ("truncated", "not a readable ONNX model")])
def test_hostile_files_write_no_repository(model_dir: Path, tmp_path: Path, case: str, phrase: str) -> None:
    path = hostile_onnx(model_dir, case)
    with pytest.raises(VggExportError, match=phrase) as caught:
        write_repository(path, tmp_path / "repo", TritonConfig(), allow_unverified=True)
    assert "\n" not in str(caught.value) and not (tmp_path / "repo").exists()


def test_triton_cli_exits_1_on_an_empty_file(run_cli: Cli, model_dir: Path, tmp_path: Path) -> None:
    path = hostile_onnx(model_dir, "empty")
    result = run_cli("triton", "--model", path, "--repository", tmp_path / "repo", "--allow-unverified")
    assert result.exit_code == 1 and "is empty" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "repo").exists()
