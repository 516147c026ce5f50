"""The transport-neutral data plane (KServe's DataPlane, MLServer's model registry are the model).

HTTP (``http_api``) and gRPC (``grpc_server``) turn their requests into these calls
and these results back into their wire formats; nothing here knows either transport.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np

from vggexport import __version__
from vggexport.serve.errors import NotFoundError, ProtocolError, UnavailableError
from vggexport.serve.images import decode_image, png_data_url
from vggexport.serve.model_config import served_model_config
from vggexport.backend.base import softmax
from vggexport.serve.service import OUTPUT, OUTPUTS, ModelService

SERVER_NAME = "vggexport"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
VERSION = "1"  # a vggexport server serves one model file: version 1
# Parsing or encoding on the event loop holds up every other request; handing it to the pool costs two thread
# switches under the GIL (more than a small request's whole parse). So what is larger than this (a body's
# bytes, an answer's JSON values) goes to the pool, the rest is done in place.
INLINE_BYTES = 64 * 1024
INLINE_VALUES = 4096
T = TypeVar("T")


@dataclass(frozen=True)
class OutputRequest:
    name: str
    classification: int = 0  # > 0: Triton's classification extension, top-K "score:index:label" strings
    binary: bool = False


@dataclass
class InferCall:
    model: str
    version: str | None
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[OutputRequest] | None = None  # None: every output
    binary_output: bool = False


@dataclass
class InferResult:
    model_name: str
    model_version: str
    id: str
    outputs: list[tuple[OutputRequest, np.ndarray]] = field(default_factory=list)

    def json_values(self) -> int:
        """How many values the answer carries as JSON numbers (what encoding it costs)."""
        return sum(array.size for output, array in self.outputs if not output.binary)


class InFlight:
    """``with plane.serving():`` counts the request in flight until its answer (a class: no generator to make
    per request)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def __enter__(self) -> None:
        self.plane.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        self.plane.in_flight -= 1


class DataPlane:
    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.draining = False
        self.in_flight = 0  # inference and image requests between parsing and their answer
        # JSON parsing, image decoding and PNG encoding run here, off the event loop.
        self.pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="vggexport-parse")
        self.guard = InFlight(self)
        # What "no outputs named" means, by binary_data_output: made once, not per request.
        self.every_output = {binary: [OutputRequest(name, binary=binary) for name in OUTPUTS]
                             for binary in (False, True)}

    async def offload(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(func, *args, **kwargs))

    async def offload_if(self, large: bool, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in the pool when the work is ``large`` (see INLINE_BYTES), else here and now."""
        return await self.offload(func, *args) if large else func(*args)

    def serving(self) -> InFlight:
        """Refuse new work while draining (503); count the work in flight so a drain can wait for it."""
        if self.draining:
            raise UnavailableError("the server is shutting down")
        return self.guard

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and self.service.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None) -> ModelService:
        if name != self.service.name:
            raise NotFoundError(f"unknown model {name[:80]!r}; this server serves {self.service.name!r}")
        if version not in (None, "", VERSION):
            raise NotFoundError(f"model {name!r} has no version {version[:20]!r}; it has version {VERSION!r}")
        return self.service

    def model_ready(self, name: str, version: str | None) -> bool:
        return self.model(name, version).ready and not self.draining

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.model(name, version)
        outputs = [{"name": n, "datatype": "FP32", "shape": [-1, len(model.class_names)]} for n in OUTPUTS]
        return {
            "name": model.name, "versions": [VERSION], "platform": "onnxruntime_onnx",
            "inputs": [{"name": model.input_name, "datatype": model.input_datatype, "shape": model.input_shape}],
            "outputs": outputs,
            "parameters": {"execution_provider": model.provider, "class_names": model.class_names,
                           "max_batch_size": model.config.max_batch_size},
        }

    def model_config(self, name: str, version: str | None) -> Any:
        """Triton's model configuration extension: the ModelConfig message (tritonclient's schema)."""
        return served_model_config(self.model(name, version))

    async def infer(self, call: InferCall) -> InferResult:
        model = self.model(call.model, call.version)
        wanted = self.requested_outputs(call)
        if len(call.inputs) != 1:
            raise ProtocolError(f"expected exactly one input ({model.input_name!r}), got {len(call.inputs)}")
        ((name, array),) = call.inputs.items()
        with self.serving():
            logits = await model.infer(model.check_input(name, array))
        result = InferResult(model.name, VERSION, call.id)
        for output in wanted:
            values = logits if output.name == OUTPUT else softmax(logits)
            if output.classification:
                values = classify(values, output.classification, model.class_names)
            result.outputs.append((output, values))
        return result

    def requested_outputs(self, call: InferCall) -> list[OutputRequest]:
        if call.outputs is None:
            return self.every_output[call.binary_output]
        names = [o.name for o in call.outputs]
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise ProtocolError(f"unknown output {unknown[0][:40]!r}: choose {' or '.join(map(repr, OUTPUTS))}")
        if len(set(names)) != len(names):
            raise ProtocolError("an output is requested twice")
        return call.outputs

    async def classify_image(self, name: str, raw: bytes, *, top_k: int = 3,
                             return_input: bool = False) -> dict[str, Any]:
        """Image bytes -> top-k labels; with ``return_input`` also the pixels the model saw, as a PNG data URL."""
        model = self.model(name, None)
        images = model.check_classify_available()
        if return_input and len(images.runner.output_names) < 2:
            raise ProtocolError("this preprocessing model does not output the pixels it saw; re-export it "
                                "with `vggexport export --with-preprocessing`")
        with self.serving():
            pixels = await self.offload(decode_image, raw, channels=model.channels,
                                        max_pixels=model.config.max_image_pixels)
            logits, seen = await model.classify(pixels)
        answer: dict[str, Any] = {"model_name": model.name, "predictions": model.top_k(logits, top_k)[0]}
        if return_input and seen is not None:
            answer["input_image"] = await self.offload(png_data_url, seen[0])
        return answer

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def classify(values: np.ndarray, count: int, labels: list[str]) -> np.ndarray:
    """Triton's classification extension: per row the top ``count`` as b"<value>:<index>:<label>".

    The value is the output's own (a logit or a probability), printed as C++'s std::to_string
    prints a float ("%f"), as Triton does; ``count`` beyond the class count is clamped, and a class
    without a label is "<value>:<index>".
    """
    k = min(count, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    rows = [[(f"{float(row[i]):f}:{int(i)}" + (f":{labels[i]}" if i < len(labels) else "")).encode() for i in top]
            for row, top in zip(values, order)]
    return np.array(rows, dtype=np.object_).reshape(len(values), k)

