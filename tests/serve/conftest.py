"""Serving fixtures: a model folder with model.onnx and model.preprocessing.onnx, and real servers on it."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import Exported
from tests.serve_process import ServerProcess
from vggexport.serve.smoke import free_port

MODEL = "vgg11_bn"  # the served name of the tiny trained model
INFER = f"/v2/models/{MODEL}/infer"


def inputs(n: int, seed: int = 0) -> np.ndarray:
    """``n`` FP32 images of the tiny model's input shape."""
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32), dtype=np.float32)


class Served(ServerProcess):
    """A `vggexport serve` process with HTTP and gRPC on free ports of 127.0.0.1."""

    def __init__(self, model: Path, *extra: str) -> None:
        self.grpc_port = free_port()
        super().__init__(model, "--grpc-port", str(self.grpc_port), "--provider", "cpu", *extra)
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        return self.process.stdout.read() if self.process.stdout else ""


@pytest.fixture(scope="session")
def served_folder(exported_tiny: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx and model.preprocessing.onnx of the tiny trained model, in a folder of their own."""
    folder = tmp_path_factory.mktemp("served") / "vgg11_bn"
    folder.mkdir()
    for name in ("model.onnx", "model.preprocessing.onnx"):
        shutil.copyfile(exported_tiny.folder / name, folder / name)
    return folder


def infer_threads() -> list[threading.Thread]:
    """The batchers' instance threads alive in this process (each engine's are named vggexport-infer-N)."""
    return [t for t in threading.enumerate() if t.name.startswith("vggexport-infer-") and t.is_alive()]


@pytest.fixture(scope="session")
def server(served_folder: Path) -> Iterator[Served]:
    process = Served(served_folder / "model.onnx", "--max-batch-size", "64", "--max-queue-delay-ms", "5",
                     "--max-body-mb", "1").wait_ready()
    yield process
    process.stop()


@pytest.fixture
def model_only(served_folder: Path, tmp_path: Path) -> Path:
    """model.onnx with no preprocessing model beside it."""
    folder = tmp_path / "vgg11_bn"
    folder.mkdir()
    shutil.copyfile(served_folder / "model.onnx", folder / "model.onnx")
    return folder / "model.onnx"


def save_labelled(graph: Any, name: str, path: Path) -> Path:
    """Save a 2x2-input, 4-class graph with the metadata a vggexport server needs to serve it."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {"model_name": name, "class_names": json.dumps(list("abcd")), "model_config": "{}",
            "image_size": "2", "in_channels": "1"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(path))
    return path


def failing_model(path: Path) -> Path:
    """A vggexport-labelled ONNX whose Reshape to (1, 4) fails at run time for any batch but 1."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "target"], ["logits"])], "fails",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("target", TensorProto.INT64, [2], [1, 4])])
    return save_labelled(graph, "fails", path)


def endless_model(path: Path) -> Path:
    """A vggexport-labelled ONNX whose every run spins forever (a Loop that never stops): a worker that is
    never free, so a queue behind it fills whatever the machine's speed. Its server must be killed."""
    from onnx import TensorProto, helper

    spin = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "spin", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "input"], ["spun"], body=spin),
         helper.make_node("Flatten", ["spun"], ["logits"], axis=1)], "endless",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [2**63 - 1]),
         helper.make_tensor("keep_going", TensorProto.BOOL, [], [True])])
    return save_labelled(graph, "endless", path)
