"""Scale-aware parity: a copy whose outputs are scaled by 1.01, or shifted by 1 % of their range, is refused at
any output scale (tiny logits, log-probabilities, large logits), by ``assert_parity`` and ``vggexport verify``
alike; the faithful export of the same checkpoint passes both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.broken_models import append_to_output
from tests.conftest import Cli, order_one_logits, tiny_config
from vggexport.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vggexport.export.onnx import export_onnx
from vggexport.model import build_model
from vggexport.export.spec import ExportSpec
from vggexport.verify.run import ParityError, assert_parity, random_inputs

CLASSES = tuple(f"c{i}" for i in range(10))
SHAPE = (1, 32, 32)
# What the last layer makes of a random-init VGG: its own ~1e-4 logits, one-signed outputs like
# log-probabilities (about -10, never above 0), or logits in the hundreds.
KINDS = ("tiny", "log-probabilities", "large")


def reference_outputs(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x)).numpy() for x in random_inputs(SHAPE, (1, 7, 64)).values()])


def checkpoint_of(kind: str, folder: Path) -> tuple[Checkpoint, float]:
    """(checkpoint, the range max - min of its outputs on the random checks)."""
    torch.manual_seed(0)
    config = tiny_config(class_names=CLASSES)
    model = build_model(config).eval()
    if kind != "tiny":
        order_one_logits(model, SHAPE)
    last = model.classifier[-1]
    with torch.no_grad():
        if kind == "log-probabilities":
            last.bias -= 10.0
        if kind == "large":
            last.weight *= 300.0
            last.bias *= 300.0
    outputs = reference_outputs(model)
    if kind == "log-probabilities":
        assert outputs.max() < 0
    assert {"tiny": outputs.std() < 1e-2, "log-probabilities": outputs.min() < -5,
            "large": np.abs(outputs).max() > 100}[kind]
    path = save_checkpoint(folder / "best.pt", model_config=config,
                           state={"model": model.state_dict(), "metrics": {"test_accuracy": 0.5}})
    return load_checkpoint(path), float(outputs.max() - outputs.min())


def copies(ckpt: Checkpoint, spread: float, folder: Path) -> dict[str, Path]:
    faithful = export_onnx(ckpt, folder / "model.onnx", ExportSpec())
    made = {"faithful": faithful}
    for name, op, constant in (("scaled", "Mul", 1.01), ("offset", "Add", 0.01 * spread)):
        proto = onnx.load(str(faithful))
        append_to_output(proto, op, np.array([constant], np.float32))
        made[name] = folder / f"{name}.onnx"
        onnx.save(proto, str(made[name]))
    return made


@pytest.fixture(scope="module", params=KINDS)
def planted(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, dict[str, Path]]:
    folder = tmp_path_factory.mktemp(f"scale-{request.param}")
    ckpt, spread = checkpoint_of(request.param, folder)
    return ckpt, copies(ckpt, spread, folder)


def test_assert_parity_refuses_a_scaled_or_shifted_copy(planted: tuple[Checkpoint, dict[str, Path]]) -> None:
    ckpt, files = planted
    report = assert_parity(ckpt.path, files["faithful"], input_shape=SHAPE)
    assert max(c.range_error for c in report.runtimes[1].checks.values()) < 1e-4
    for name in ("scaled", "offset"):
        with pytest.raises(ParityError, match=r"of the reference's range .* a scaled or shifted output"):
            assert_parity(ckpt.path, files[name], input_shape=SHAPE)


def test_verify_refuses_a_scaled_or_shifted_copy(planted: tuple[Checkpoint, dict[str, Path]], run_cli: Cli,
                                                 tmp_path: Path) -> None:
    ckpt, files = planted
    report = tmp_path / "report.json"
    result = run_cli("verify", "--checkpoint", ckpt.path, *(a for f in files.values() for a in ("--model", f)),
                     "--random-only", "--report", report)
    assert result.exit_code == 1, result.output
    verdicts = {r["artifact"]: r for r in json.loads(report.read_text())["runtimes"] if r["artifact"]}
    assert verdicts["model.onnx"]["passed"] and verdicts["model.onnx"]["failures"] == []
    for name in ("scaled.onnx", "offset.onnx"):
        assert not verdicts[name]["passed"]
        assert any("a scaled or shifted output" in f for f in verdicts[name]["failures"]), verdicts[name]
        errors = [c["range_error"] for c in verdicts[name]["checks"].values()]
        assert min(errors) >= 4e-3  # 1.01x is >= 0.5 % of the range, a 1 % shift 1 %: far above 1e-3
