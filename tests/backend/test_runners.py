from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export.test_export import make_checkpoint
from vggexport.errors import VggExportError
from vggexport.export.onnx import export_onnx
from vggexport.export.torchscript import export_torchscript
from vggexport.backend.onnxrt import OnnxRuntimeRunner
from vggexport.backend.pytorch import TorchRunner, TorchScriptRunner
from vggexport.backend.registry import make_runner
from vggexport.export.spec import ExportSpec


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runners")
    ckpt = make_checkpoint(folder)
    export_onnx(ckpt, folder / "model.onnx", ExportSpec())
    export_torchscript(ckpt, folder / "model.torchscript.pt")
    return folder


def test_every_runner_is_a_context_manager(exported: Path) -> None:
    batch = np.random.default_rng(0).standard_normal((3, 1, 32, 32), dtype=np.float32)
    outputs = []
    for runner in (TorchRunner(exported / "best.pt"), TorchScriptRunner(exported / "model.torchscript.pt"),
                   OnnxRuntimeRunner(exported / "model.onnx", provider="cpu")):
        assert not runner.is_active
        with runner as active:
            assert active.is_active
            outputs.append(active.infer(batch))
        assert not runner.is_active
        with pytest.raises(RuntimeError, match="before activate"):
            runner.infer(batch)
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], atol=1e-4, rtol=1e-3)


def test_ort_reports_its_provider(exported: Path) -> None:
    with OnnxRuntimeRunner(exported / "model.onnx", provider="auto") as runner:
        expected = "CUDAExecutionProvider" if torch.cuda.is_available() else "CPUExecutionProvider"
        assert runner.provider == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU failure")
def test_ort_cuda_without_gpu_fails_loudly(exported: Path) -> None:
    with pytest.raises(VggExportError, match="CUDA execution provider did not start: ") as failed:
        OnnxRuntimeRunner(exported / "model.onnx", provider="cuda").activate()
    assert "\n" not in str(failed.value)  # ORT's reason (e.g. libcuda.so.1 cannot be opened), in the one line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU failure")
def test_torchscript_cuda_without_gpu_fails_loudly(exported: Path) -> None:
    with pytest.raises(VggExportError, match="CUDA is not available"):
        make_runner("torchscript-cuda", exported / "model.torchscript.pt").activate()


@pytest.mark.gpu
def test_cuda_runners_match_cpu(exported: Path) -> None:
    batch = np.random.default_rng(1).standard_normal((64, 1, 32, 32), dtype=np.float32)
    with TorchRunner(exported / "best.pt") as reference:
        expected = reference.infer(batch)
    for runner in (TorchRunner(exported / "best.pt", device="cuda"),
                   TorchScriptRunner(exported / "model.torchscript.pt", device="cuda"),
                   OnnxRuntimeRunner(exported / "model.onnx", provider="cuda")):
        with runner:
            assert "cuda" in runner.provider.lower()
            np.testing.assert_allclose(runner.infer(batch), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("content", [b"", b"\x08\x01garbage", b"not onnx at all"])
def test_corrupt_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(VggExportError, match="not a readable ONNX model|not a vggexport export"):
        OnnxRuntimeRunner(path).activate()


def test_foreign_onnx(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(VggExportError, match="not a vggexport export"):
        OnnxRuntimeRunner(tmp_path / "foreign.onnx").activate()


def test_corrupt_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "model.torchscript.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(VggExportError, match="not a readable TorchScript model"):
        TorchScriptRunner(path).activate()


def test_wrong_input_shape_is_a_user_error(exported: Path) -> None:
    with OnnxRuntimeRunner(exported / "model.onnx") as runner:
        with pytest.raises(VggExportError, match="input shape"):
            runner.infer(np.zeros((2, 3, 32, 32), np.float32))
        with pytest.raises(VggExportError, match="float32"):
            runner.infer(np.zeros((2, 1, 32, 32), np.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("serving", [False, True], ids=["verify", "serve"])
def test_ort_cuda_runs_without_tf32(exported: Path, serving: bool) -> None:
    """Parity measures the export, not TF32: the CUDA provider computes in true fp32, and the server's too."""
    from vggexport.serve.runner import ServingRunner

    kind = ServingRunner if serving else OnnxRuntimeRunner
    with kind(exported / "model.onnx", provider="cuda") as runner:
        options = runner.session.get_provider_options()["CUDAExecutionProvider"]
        assert options["use_tf32"] == "0" and options["cudnn_conv_algo_search"] == "HEURISTIC"


@pytest.mark.parametrize(("name", "kind"), [("model.onnx", "onnx"), ("x.preprocessing.onnx", "onnx"),
                                            ("model.torchscript.pt", "torchscript"), ("model.pt2", "torch-export"),
                                            ("best.pt", None), ("model.onnx.bak", None)])
def test_artifact_kind_follows_the_file_name(name: str, kind: str | None) -> None:
    from vggexport.backend.registry import artifact_kind

    assert artifact_kind(Path(name)) == kind


def test_runtimes_for_each_kind() -> None:
    from vggexport.names import RUNTIMES
    from vggexport.backend.registry import ARTIFACT_KINDS, runtimes_for

    assert runtimes_for("onnx", cuda=False) == ["onnxruntime-cpu"]
    assert runtimes_for("torchscript", cuda=True) == ["torchscript", "torchscript-cuda"]
    for kind in ARTIFACT_KINDS:
        assert set(runtimes_for(kind, cuda=True)) <= set(RUNTIMES)


@pytest.fixture(scope="module")
def program(exported: Path) -> Path:
    from tests.export.test_export import make_checkpoint
    from vggexport.export.pt2 import export_exported_program

    return export_exported_program(make_checkpoint(exported / "pt2"), exported / "pt2" / "model.pt2")


@pytest.mark.parametrize("name, runtime", [
    ("model.onnx", "onnxruntime-cpu"), ("model.torchscript.pt", "torchscript"), ("model.pt2", "torch-export"),
    *(pytest.param(name, runtime, marks=pytest.mark.gpu) for name, runtime in (
        ("model.onnx", "onnxruntime-cuda"), ("model.torchscript.pt", "torchscript-cuda"),
        ("model.pt2", "torch-export-cuda")))])
def test_a_runner_given_bytes_loads_those_bytes_not_the_file(exported: Path, program: Path, tmp_path: Path,
                                                            name: str, runtime: str) -> None:
    """The file is overwritten after it was read: the runner still loads (and runs) the bytes it was given."""
    from vggexport.store.fileio import read_artifact

    source = program if name == "model.pt2" else exported / name
    batch = np.random.default_rng(1).standard_normal((2, 1, 32, 32), dtype=np.float32)
    with make_runner(runtime, source) as runner:
        expected = runner.infer(batch)
    path = tmp_path / name
    path.write_bytes(source.read_bytes())
    artifact = read_artifact(path)
    path.write_bytes(b"PK\x03\x04 not the model any more")
    with make_runner(runtime, artifact) as runner:  # cuDNN may pick another algorithm per session
        np.testing.assert_allclose(runner.infer(batch), expected, rtol=0, atol=0 if "cuda" not in runtime else 1e-6)
    with pytest.raises(VggExportError, match="not a readable"):  # the path alone is read at activation: the junk
        make_runner(runtime, path).activate()


def test_read_artifact_hashes_what_it_read(exported: Path) -> None:
    import hashlib

    from vggexport.store.fileio import read_artifact

    artifact = read_artifact(exported / "model.onnx")
    assert artifact.data == (exported / "model.onnx").read_bytes() and artifact.size == len(artifact.data)
    assert artifact.sha256 == hashlib.sha256(artifact.data).hexdigest()
    assert "data" not in repr(artifact)  # ~90 MB never lands in a log line


def unreadable(tmp_path: Path, case: str) -> Path:
    """A path no read succeeds on; as root a mode-000 file is readable, so a symlink loop stands in for it."""
    path = tmp_path / "model.onnx"
    if case == "directory":
        path.mkdir()
    elif case == "symlink loop":
        path.symlink_to(path)
    return path


@pytest.mark.parametrize("case, phrase", [("directory", "is a directory"), ("symlink loop", "cannot read"),
                                          ("missing", "no file at")])
def test_read_artifact_refuses_in_one_line(tmp_path: Path, case: str, phrase: str) -> None:
    from vggexport.store.fileio import read_artifact

    with pytest.raises(VggExportError, match=phrase) as caught:
        read_artifact(unreadable(tmp_path, case))
    assert "\n" not in str(caught.value) and caught.value.__cause__ is None


def test_read_artifact_refuses_a_file_it_may_not_read(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    # Root reads a mode-000 file, and CI runs as root: a child imports as the caller, enters this folder
    # (nobody may not search pytest's folders above it), drops to nobody (65534), then reads.
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    path.chmod(0)
    tmp_path.chmod(0o711)
    child = ("import os, sys\nfrom vggexport.store.fileio import read_artifact\nos.chdir(sys.argv[1])\n"
             "if os.geteuid() == 0:\n    os.setuid(65534)\nread_artifact('model.onnx')\n")
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True,
                            cwd=Path(__file__).parents[2], timeout=60)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r".*VggExportError: cannot read model\.onnx: Permission denied", last), result.stderr


@pytest.mark.parametrize("runtime", ["onnxruntime-cpu", "torchscript", "torch-export"])
@pytest.mark.parametrize("content", [b"", "half"])
def test_empty_or_truncated_bytes_are_a_one_line_error(exported: Path, program: Path, tmp_path: Path,
                                                      runtime: str, content: object) -> None:
    from vggexport.store.fileio import ArtifactBytes

    source = {"onnxruntime-cpu": exported / "model.onnx", "torchscript": exported / "model.torchscript.pt",
              "torch-export": program}[runtime]
    data = source.read_bytes()[: source.stat().st_size // 2] if content == "half" else b""
    with pytest.raises(VggExportError, match="empty|not a readable|cannot load") as caught:
        make_runner(runtime, ArtifactBytes(tmp_path / source.name, data, "0" * 64)).activate()
    assert "\n" not in str(caught.value)
