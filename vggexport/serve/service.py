"""The served model: an ONNX Runtime runner, its metadata, and the batcher in front of it."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vggexport.errors import VggExportError
from vggexport.runners import OnnxRuntimeRunner
from vggexport.serve.batcher import DynamicBatcher
from vggexport.serve.metrics import ServerMetrics
from vggexport.serve.protocol import MetadataTensor, ModelMetadata, ProtocolError

INPUT, OUTPUT, PROBABILITIES = "input", "logits", "probabilities"


@dataclass(frozen=True)
class ServeConfig:
    model: str
    provider: str = "auto"
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0
    max_body_bytes: int = 16 * 1024 * 1024
    threads: int | None = None
    workers: int = 1


class ModelService:
    def __init__(self, config: ServeConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.runner = OnnxRuntimeRunner(Path(config.model), provider=config.provider, threads=config.threads,
                                        spinning=False)
        self.runner.activate()
        meta = self.runner.metadata
        self.name = meta["model_name"]
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.mean, self.std = json.loads(meta["mean"]), json.loads(meta["std"])
        self.image_size, self.channels = int(meta["image_size"]), int(meta["in_channels"])
        self.batcher = DynamicBatcher(self.runner.infer, max_batch_size=config.max_batch_size,
                                      max_queue_delay_ms=config.max_queue_delay_ms, observe=metrics.observe_batch)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            name=self.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[MetadataTensor(name=INPUT, datatype="FP32", shape=[-1, *self.input_shape])],
            outputs=[MetadataTensor(name=OUTPUT, datatype="FP32", shape=[-1, len(self.class_names)]),
                     MetadataTensor(name=PROBABILITIES, datatype="FP32", shape=[-1, len(self.class_names)])],
            parameters={"execution_provider": self.runner.provider, "class_names": self.class_names,
                        "max_batch_size": self.config.max_batch_size},
        )

    def check_input(self, name: str, array: np.ndarray) -> np.ndarray:
        if name != INPUT:
            raise ProtocolError(f"unknown input {name!r}: this model takes {INPUT!r}")
        if array.dtype != np.float32:
            raise ProtocolError(f"input {INPUT!r} must be FP32")
        if array.ndim != 4 or tuple(array.shape[1:]) != self.input_shape or len(array) == 0:
            raise ProtocolError(f"input {INPUT!r} has shape {list(array.shape)}; expected [N, "
                                f"{', '.join(map(str, self.input_shape))}] with N >= 1")
        if len(array) > self.config.max_batch_size:
            raise ProtocolError(f"batch of {len(array)} exceeds max batch size {self.config.max_batch_size}")
        if not np.isfinite(array).all():
            raise ProtocolError(f"input {INPUT!r} contains NaN or infinity")
        return array

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            return await self.batcher.submit(batch)
        except VggExportError:
            raise
        except Exception as exc:  # a failed batch: the client hears why, the server goes on
            raise VggExportError(f"inference failed: {type(exc).__name__}: {exc}", http_status=500) from None

    def decode_image(self, raw: bytes) -> np.ndarray:
        """PNG/JPEG bytes -> the normalized (1, C, H, W) float32 the model takes, as in training."""
        import torch
        from PIL import Image, UnidentifiedImageError

        from vggexport.transforms import preprocess

        if not raw:
            raise ProtocolError("empty image body")
        try:
            with Image.open(io.BytesIO(raw)) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, self.channels)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise ProtocolError("the body is not a readable PNG or JPEG image") from None
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            return preprocess(tensor, image_size=self.image_size, mean=self.mean, std=self.std).numpy()

    def top_k(self, logits: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        probabilities = softmax(logits)
        k = max(1, min(k, len(self.class_names)))
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return [[{"index": int(i), "label": self.class_names[i], "probability": float(p[i])} for i in row]
                for row, p in zip(order, probabilities)]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
