from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import Cli, Exported, order_one_logits, tiny_config
from vggexport.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vggexport.errors import VggExportError
from vggexport.export.onnx import export_onnx
from vggexport.export.torchscript import export_torchscript, load_torchscript
from vggexport.store.onnx_file import read_onnx_metadata
from vggexport.model import CFGS, build_model
from vggexport.export.spec import ExportSpec
from vggexport.transforms import preprocess
from vggexport.verify.run import ParityError, assert_parity

CLASSES = tuple(f"c{i}" for i in range(10))


def make_checkpoint(folder: Path, **overrides: object) -> Checkpoint:
    """A random-init tiny checkpoint whose logits are of order 1, so the fp32 tolerances bite."""
    torch.manual_seed(0)
    config = tiny_config(class_names=CLASSES, **overrides)
    model = order_one_logits(build_model(config), (config.in_channels, config.image_size, config.image_size))
    path = save_checkpoint(folder / "best.pt", model_config=config,
                           state={"model": model.state_dict(), "metrics": {"test_accuracy": 0.5}})
    return load_checkpoint(path)


@pytest.fixture(scope="module", params=[(c, bn) for c in CFGS for bn in (False, True)],
                ids=lambda p: f"{p[0]}-bn{int(p[1])}")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path, Path]:
    cfg, batch_norm = request.param
    folder = tmp_path_factory.mktemp(f"export-{cfg}-{batch_norm}")
    ckpt = make_checkpoint(folder, cfg=cfg, batch_norm=batch_norm)
    if batch_norm:  # trained-looking BN statistics, so folding them into convs is exercised
        state = ckpt.payload["model"]
        for key in state:
            if key.endswith("running_var"):
                state[key].uniform_(0.5, 2.0)
            elif key.endswith("running_mean"):
                state[key].uniform_(-0.2, 0.2)
        ckpt = load_checkpoint(save_checkpoint(folder / "best.pt", model_config=ckpt.model_config, state=ckpt.payload))
    return (ckpt, export_onnx(ckpt, folder / "model.onnx", ExportSpec()),
            export_torchscript(ckpt, folder / "m.torchscript.pt"))


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_parity_every_cfg(exported: tuple[Checkpoint, Path, Path], runtime: str) -> None:
    ckpt, onnx_path, ts_path = exported
    report = assert_parity(ckpt.path, onnx_path if runtime == "onnx" else ts_path, input_shape=(1, 32, 32))
    assert {"random-b1", "random-b7", "random-b64"} <= set(report.runtimes[1].checks)


def test_onnx_is_valid_with_dynamic_batch(exported: tuple[Checkpoint, Path, Path]) -> None:
    _, onnx_path, _ = exported
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    (graph_input,) = proto.graph.input
    assert graph_input.name == "input" and proto.graph.output[0].name == "logits"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 64):
        assert session.run(None, {"input": np.zeros((batch, 1, 32, 32), np.float32)})[0].shape == (batch, 10)


def test_onnx_metadata_describes_the_model(exported: tuple[Checkpoint, Path, Path]) -> None:
    ckpt, onnx_path, _ = exported
    meta = read_onnx_metadata(onnx_path)
    assert json.loads(meta["class_names"]) == list(CLASSES)
    assert json.loads(meta["mean"]) == [0.286] and json.loads(meta["std"]) == [0.353]
    assert meta["image_size"] == "32" and meta["in_channels"] == "1" and meta["cfg"] == ckpt.model_config.cfg
    assert meta["model_name"] == ckpt.model_config.name and meta["test_accuracy"] == "0.500000"
    assert meta["checkpoint_sha256"] == ckpt.sha256() and meta["vggexport_version"]


def test_torchscript_metadata(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path)
    _, meta = load_torchscript(export_torchscript(ckpt, tmp_path / "m.torchscript.pt"))
    assert json.loads(meta["class_names"]) == list(CLASSES) and meta["checkpoint_sha256"] == ckpt.sha256()


@pytest.mark.parametrize("opset", [18, 20, 23])
def test_opsets(tmp_path: Path, opset: int) -> None:
    ckpt = make_checkpoint(tmp_path)
    path = export_onnx(ckpt, tmp_path / "m.onnx", ExportSpec(opset=opset))
    assert any(o.domain in ("", "ai.onnx") and o.version == opset for o in onnx.load(str(path)).opset_import)
    assert_parity(ckpt.path, path, input_shape=(1, 32, 32))


def test_unsupported_opset() -> None:
    with pytest.raises(VggExportError, match="unsupported opset 11"):
        ExportSpec(opset=11)


def test_with_preprocessing_takes_raw_pixels_of_any_size(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path)
    path = export_onnx(ckpt, tmp_path / "pre.onnx", ExportSpec(), preprocessing=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = ckpt.build_model()
    config = ckpt.model_config
    rng = np.random.default_rng(0)
    for shape in ((1, 1, 28, 28), (3, 1, 32, 32), (2, 1, 120, 75)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        with torch.no_grad():
            expected = model(preprocess(torch.from_numpy(pixels), image_size=32, mean=config.mean, std=config.std))
            blank = model(preprocess(torch.zeros_like(torch.from_numpy(pixels)), image_size=32, mean=config.mean,
                                     std=config.std))
        # The images' content moves the logits far beyond the tolerance, so a graph that ignored its input
        # (or answered for a blank image) could not pass.
        assert (expected - blank).abs().max() > 100 * 1e-4
        np.testing.assert_allclose(session.run(None, {"input": pixels})[0], expected.numpy(), atol=1e-4, rtol=1e-3)


def test_parity_failure_reports_worst_difference(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path)
    other = make_checkpoint(tmp_path / "other", dropout=0.0)
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in other.payload["model"].items()}
    model = build_model(other.model_config)
    model.load_state_dict(state)
    with pytest.raises(ParityError, match="max abs diff"):
        assert_parity(ckpt.path, model.eval(), input_shape=(1, 32, 32))


@pytest.mark.gpu
def test_torchscript_exported_on_cpu_runs_on_cuda(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path)
    path = export_torchscript(ckpt, tmp_path / "m.torchscript.pt")
    module, _ = load_torchscript(path, "cuda")
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x.cuda()).cpu(), ckpt.build_model()(x), atol=1e-4, rtol=1e-3)
        back, _ = load_torchscript(path, "cpu")
        torch.testing.assert_close(back(x), ckpt.build_model()(x))


# -- the CLI: export, failure behaviour -------------------------------------------------------------


def test_export_command_writes_both(exported_tiny: Exported) -> None:
    # exported_tiny is `vggexport export` on the trained model (its exit code 0 is asserted there).
    for name in ("model.torchscript.pt", "model.onnx", "model.preprocessing.onnx"):
        assert (exported_tiny.folder / name).stat().st_size > 0
        assert name in exported_tiny.output


def test_no_checkpoint_says_train_first(run_cli: Cli, tmp_path: Path) -> None:
    for command in ("onnx", "torchscript", "export", "verify"):
        result = run_cli(command, "--artifacts", tmp_path)
        expected_code = 2 if command == "verify" else 1  # verify: 1 is a parity verdict, 2 could not judge
        assert result.exit_code == expected_code and "run `vggexport train` first" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_corrupt_checkpoint_cli(run_cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    result = run_cli("onnx", "--checkpoint", bad, "--artifacts", tmp_path)
    assert result.exit_code == 1 and "not a readable checkpoint" in result.output
    assert not list(tmp_path.rglob("*.onnx"))


def test_unsupported_opset_cli(run_cli: Cli, trained_artifacts: Path) -> None:
    result = run_cli("onnx", "--artifacts", trained_artifacts, "--opset", "9", "--out", trained_artifacts / "x.onnx")
    assert result.exit_code == 1 and "unsupported opset 9" in result.output
    assert not (trained_artifacts / "x.onnx").exists()


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_flip_averaged_model_exports_with_parity(tmp_path: Path, runtime: str) -> None:
    ckpt = make_checkpoint(tmp_path, flip_average=True)
    target = (export_onnx(ckpt, tmp_path / "model.onnx", ExportSpec()) if runtime == "onnx"
              else export_torchscript(ckpt, tmp_path / "model.torchscript.pt"))
    report = assert_parity(ckpt.path, target, input_shape=(1, 32, 32))
    assert {"random-b1", "random-b7", "random-b64"} <= set(report.runtimes[1].checks)
    if runtime == "onnx":
        assert json.loads(read_onnx_metadata(target)["model_config"])["flip_average"] is True
