"""The served model's engines: what a server built in code and then refused leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.conftest import infer_threads
from vggexport.errors import VggExportError
from vggexport.serve.metrics import create_metrics
from vggexport.serve.service import ModelService, ServeConfig


def test_a_refused_preprocessing_model_stops_both_engines_instance_threads(served_folder: Path) -> None:
    """Refused after both engines warmed up (so after both started their instance threads): none stays alive."""
    model = served_folder / "model.onnx"
    config = ServeConfig(model=str(model), provider="cpu", gate="off", warmup=True, instances=2,
                         preprocessing_model=str(model))  # FP32 in: not a preprocessing model
    said: list[str] = []
    before = infer_threads()
    with pytest.raises(VggExportError, match="not uint8 pixels"):
        ModelService(config, create_metrics(), said.append)
    # Both engines did warm up (each instance thread ran a batch) before the refusal, so threads were started.
    assert sum("warm-up: batch 64 on model.onnx" in line for line in said) == 2
    assert infer_threads() == before


def test_a_served_model_that_warmed_up_and_closes_leaves_no_thread(served_folder: Path) -> None:
    config = ServeConfig(model=str(served_folder / "model.onnx"), provider="cpu", gate="off", warmup=True,
                         instances=2)
    before = infer_threads()
    service = ModelService(config, create_metrics(), lambda line: None)
    assert len(infer_threads()) == len(before) + 2 * len(service.engines)  # the image engine warmed up too
    for engine in service.engines:
        engine.close()
    assert infer_threads() == before and not any(e.runner.is_active for e in service.engines)


def test_a_preprocessing_model_of_another_checkpoint_is_refused_and_every_engine_closed(
        served_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both engines were built (sessions open, instance threads warmed up) before the checkpoints were compared:
    each is closed, its session released."""
    import onnx

    from vggexport.serve.service import BatchedRunner

    other = onnx.load(str(served_folder / "model.preprocessing.onnx"))
    for prop in other.metadata_props:
        if prop.key == "checkpoint_sha256":
            prop.value = "0" * 64
    onnx.save(other, str(tmp_path / "other.preprocessing.onnx"))
    closed: list[BatchedRunner] = []
    close = BatchedRunner.close

    def recorded(engine: BatchedRunner) -> None:  # the real close, and which engine it closed
        close(engine)
        closed.append(engine)

    monkeypatch.setattr(BatchedRunner, "close", recorded)
    config = ServeConfig(model=str(served_folder / "model.onnx"), provider="cpu", gate="off", warmup=True,
                         preprocessing_model=str(tmp_path / "other.preprocessing.onnx"))
    before = infer_threads()
    with pytest.raises(VggExportError, match="exported from another checkpoint"):
        ModelService(config, create_metrics(), lambda line: None)
    assert sorted(e.runner.path.name for e in closed) == ["model.onnx", "other.preprocessing.onnx"]
    assert not any(e.runner.is_active for e in closed) and infer_threads() == before
