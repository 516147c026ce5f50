"""The served model: its ONNX Runtime runner(s), input checks and the batchers in front of them.

The model takes what its ONNX input says: FP32 (N, C, S, S) for ``model.onnx``
and its precision variants, UINT8 (N, C, H, W) for ``model.preprocessing.onnx``.
Images (``/classify``) always go through a preprocessing graph: the served model
when it is one, else ``model.preprocessing.onnx`` beside it (or
``--preprocessing-model``), so the server, Triton and every embedder share one
preprocessing, bit for bit.

Each file is read once, in the process that serves it: the verified-only gate (``ServeConfig.gate``,
vggexport/serve/gate.py) checks the sha256 of those bytes against parity.json and the session is created
from the same bytes, so a file swapped after the check is never served as verified. With ``--require-signature``
the same bytes must also be the ones ``model.sig`` signs (``vggexport.store.signature.require_signed``), in every
worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vggexport.errors import VggExportError, first_line
from vggexport.backend.base import softmax
from vggexport.backend.onnxrt import default_threads, resolve_provider
from vggexport.serve.batcher import DynamicBatcher
from vggexport.names import V2_TO_NUMPY
from vggexport.serve.runner import ServingRunner
from vggexport.serve.gate import GATES, gated_bytes
from vggexport.serve.errors import InternalError, NotFoundError, PayloadTooLargeError, ProtocolError
from vggexport.serve.metrics import ServerMetrics

log = logging.getLogger("vggexport.serve")
OUTPUT, PROBABILITIES = "logits", "probabilities"
OUTPUTS = (OUTPUT, PROBABILITIES)
PREPROCESSING_FILE = "model.preprocessing.onnx"


@dataclass(frozen=True)
class ServeConfig:
    model: str
    provider: str = "auto"
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0
    max_queue_size: int | None = None  # queued images; None: 4 batches
    timeout_ms: float = 30_000.0  # 0: no limit
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    preprocessing_model: str | None = None
    threads: int | None = None  # None: what fills the cores with ``instances`` runs at once (default_threads)
    instances: int = 1  # batches run at once on the one session, from one queue (Triton's instance_group count)
    workers: int = 1
    grpc_port: int = 0
    warmup: bool | None = None  # None: on CUDA only (CPU start-up stays under a second)
    # One of GATES. Refusing by default: whoever builds a server in code ships only verified bytes too,
    # unless they opt out by name ("warn" or "off").
    gate: str = "refuse"
    # A public key PEM: serve only bytes that model.sig beside them, signed by this key, covers (with the
    # parity.json verdict it signs). None: no signature check, and model-signing is never imported.
    require_signature: str | None = None

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise VggExportError(f"unknown gate {self.gate!r}: use {', '.join(GATES)}")
        if self.max_queue_size is not None and self.max_queue_size < self.max_batch_size:
            raise VggExportError("--max-queue-size must be at least --max-batch-size")
        if self.max_image_pixels < 1:
            raise VggExportError("--max-image-pixels must be >= 1")
        if self.instances < 1:
            raise VggExportError("--instances must be >= 1")


class BatchedRunner:
    """One ONNX file's runner and its batcher."""

    def __init__(self, path: Path, config: ServeConfig, metrics: ServerMetrics, phase: Callable[[str], None]) -> None:
        artifact = gated_bytes(path, config)
        phase(f"read {artifact.path.name}: {artifact.size} bytes, sha256 {artifact.sha256}")
        self.threads = config.threads or default_threads(config.instances)  # each run's intra-op threads
        self.runner = ServingRunner(artifact, provider=config.provider, threads=self.threads, phase=phase)
        self.runner.activate()
        if config.gate != "off" and not self.runner.on_cuda and resolve_provider(config.provider) == "cuda":
            # auto was gated as CUDA but ORT fell back to its CPU provider: these bytes now run on the CPU,
            # so the CPU verdict decides too (the same bytes, not a second read of the file).
            try:
                gated_bytes(artifact, replace(config, provider="cpu"))
            except BaseException:
                self.runner.deactivate()  # refused: the session goes now, not when the traceback is collected
                raise
        self.warmup_batch_sizes: tuple[int, ...] = ()  # what warm_up ran, for the served model configuration
        # Read from the session once: every request is checked against them (the session's own accessors
        # build new objects on each call).
        self.input_name, self.input_datatype = self.runner.input_name, self.runner.input_datatype
        self.input_shape = self.runner.input_shape
        self.takes_pixels = self.input_datatype == "UINT8"
        known = V2_TO_NUMPY.get(self.input_datatype)  # the one table; None: a type no request can carry
        self.input_dtype = np.dtype(known) if known else None
        fixed = self.input_shape[1:]
        self.row_shape = tuple(fixed) if -1 not in fixed else None  # None: H and W vary (the pixel model)
        self.batcher = DynamicBatcher(self.runner.infer_all, max_batch_size=config.max_batch_size,
                                      max_queue_delay_ms=config.max_queue_delay_ms,
                                      max_queue_size=config.max_queue_size, timeout_ms=config.timeout_ms,
                                      instances=config.instances, observe=metrics.observe_batch)
        if config.warmup or (config.warmup is None and self.runner.on_cuda):
            self.warm_up(config.max_batch_size, phase)

    def warm_up(self, max_batch_size: int, phase: Callable[[str], None]) -> None:
        """Run batch 1 and the largest batch once on each instance, so CUDA's first-run costs (and failures) come
        before ready."""
        side = self.image_size
        shape = [side if d == -1 else d for d in self.input_shape[1:]]
        dtype = np.uint8 if self.takes_pixels else np.float32
        self.warmup_batch_sizes = tuple(sorted({1, max_batch_size}))
        for rows in self.warmup_batch_sizes:
            phase(f"warm-up: batch {rows} on {self.runner.path.name}")
            try:
                self.batcher.warm_up(np.zeros((rows, *shape), dtype))
            except Exception as exc:
                self.close()  # a server built in code and refused keeps no thread behind
                raise VggExportError(f"warm-up inference failed on {self.runner.provider}: "
                                     f"{first_line(exc)}") from None
            except BaseException:  # Ctrl-C during a warm-up batch: the same clean-up, the interrupt goes on
                self.close()
                raise

    def close(self) -> None:
        """Stop the instance threads (each waits for its running batch) and release the session: what a refused
        server, built in code, must not keep alive behind its error."""
        try:
            self.batcher.stop_instances()
        finally:
            self.runner.deactivate()

    @property
    def image_size(self) -> int:
        """The side warm-up images get where the input's H and W are dynamic."""
        return int(self.runner.metadata.get("image_size", "32"))

    async def run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            return await self.batcher.submit(batch)
        except VggExportError:
            raise
        except Exception:  # a failed batch: the client hears that it failed, the log hears why
            log.exception("inference failed in %s", self.runner.path.name)
            raise InternalError("inference failed; see the server log") from None


class ModelService:
    def __init__(self, config: ServeConfig, metrics: ServerMetrics, phase: Callable[[str], None]) -> None:
        self.config = config
        self.engine = BatchedRunner(Path(config.model), config, metrics, phase)
        try:
            self.describe_and_find_images(metrics, phase)
        except BaseException:
            self.engine.close()  # refused after the model warmed up: its threads and session go with the error
            raise

    def describe_and_find_images(self, metrics: ServerMetrics, phase: Callable[[str], None]) -> None:
        config = self.config
        meta = self.engine.runner.metadata
        self.name = meta["model_name"]
        try:
            self.class_names: list[str] = [str(c) for c in json.loads(meta["class_names"])]
            self.channels = int(meta.get("in_channels", "3"))
        except (ValueError, TypeError):
            raise VggExportError(f"{config.model} has unreadable class_names metadata; re-export it") from None
        self.labelled = bool(self.class_names)  # `vggexport triton` would write these names to labels.txt
        if not self.class_names:  # a model trained without names: its class indices are its labels
            classes = self.engine.runner.session.get_outputs()[0].shape[-1]
            self.class_names = [str(i) for i in range(classes if isinstance(classes, int) else 0)]
        self.images = self.engine if self.engine.takes_pixels else self.find_image_engine(metrics, phase)

    def find_image_engine(self, metrics: ServerMetrics, phase: Callable[[str], None]) -> BatchedRunner | None:
        explicit = self.config.preprocessing_model
        path = Path(explicit) if explicit else Path(self.config.model).with_name(PREPROCESSING_FILE)
        if not path.is_file():
            if explicit:
                raise VggExportError(f"no preprocessing model at {path}")
            phase(f"no {PREPROCESSING_FILE} beside the model: /classify is off")
            return None
        engine = BatchedRunner(path, self.config, metrics, phase)
        try:
            self.check_preprocessing(engine, path)
        except BaseException:
            engine.close()
            raise
        return engine

    def check_preprocessing(self, engine: BatchedRunner, path: Path) -> None:
        if not engine.takes_pixels:
            raise VggExportError(f"{path} takes {engine.input_datatype}, not uint8 pixels: "
                                 "it is not a preprocessing model")
        if engine.runner.metadata.get("checkpoint_sha256") != self.engine.runner.metadata.get("checkpoint_sha256"):
            raise VggExportError(f"{path} was exported from another checkpoint than {self.config.model}; "
                                 "re-export both with `vggexport export --with-preprocessing`")

    @property
    def engines(self) -> list[BatchedRunner]:
        return [self.engine, *([self.images] if self.images and self.images is not self.engine else [])]

    @property
    def ready(self) -> bool:
        return all(e.runner.is_active and e.batcher.alive for e in self.engines)

    @property
    def provider(self) -> str:
        return self.engine.runner.provider

    @property
    def input_name(self) -> str:
        return self.engine.input_name

    @property
    def input_datatype(self) -> str:
        return self.engine.input_datatype

    @property
    def input_shape(self) -> list[int]:
        return self.engine.input_shape

    def check_input(self, name: str, array: np.ndarray) -> np.ndarray:
        engine = self.engine
        if name != engine.input_name:
            raise ProtocolError(f"unknown input {name[:40]!r}: this model takes {engine.input_name!r}")
        if engine.input_dtype is None or array.dtype != engine.input_dtype:  # dtype.name is slow: not per request
            raise ProtocolError(f"input {name!r} must be {engine.input_datatype}")
        return self.check_batch(array, engine)

    def check_batch(self, array: np.ndarray, engine: BatchedRunner) -> np.ndarray:
        wanted, shape = engine.input_shape, array.shape
        if len(shape) != len(wanted) or (shape[1:] != engine.row_shape if engine.row_shape is not None
                                         else any(w not in (-1, n) for w, n in zip(wanted[1:], shape[1:]))):
            raise ProtocolError(f"input has shape {list(array.shape)}; expected {wanted} (-1: any size >= 1)")
        if 0 in array.shape:
            raise ProtocolError(f"input has shape {list(array.shape)}: every dimension must be >= 1")
        if len(array) > self.config.max_batch_size:
            raise ProtocolError(f"batch of {len(array)} exceeds max batch size {self.config.max_batch_size}")
        if engine.takes_pixels and array.shape[-1] * array.shape[-2] > self.config.max_image_pixels:
            raise PayloadTooLargeError(f"{array.shape[-1]}x{array.shape[-2]} image exceeds --max-image-pixels "
                                       f"{self.config.max_image_pixels}")
        # logical_and.reduce: ndarray.all() is the same reduction behind a Python-level wrapper.
        if array.dtype.kind == "f" and not np.logical_and.reduce(np.isfinite(array), axis=None):
            raise ProtocolError("input contains NaN or infinity")
        return array

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        return (await self.engine.run(batch))[0].astype(np.float32, copy=False)

    async def classify(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (1, C, H, W) -> (logits, the uint8 pixels the model saw, when the graph gives them)."""
        images = self.check_classify_available()
        outputs = await images.run(self.check_batch(pixels, images))
        return outputs[0].astype(np.float32, copy=False), (outputs[1] if len(outputs) > 1 else None)

    def check_classify_available(self) -> BatchedRunner:
        if self.images is None:
            raise NotFoundError(f"/classify needs {PREPROCESSING_FILE} beside {Path(self.config.model).name} "
                                "(or --preprocessing-model): re-export with `vggexport export --with-preprocessing`")
        return self.images

    def top_k(self, logits: np.ndarray, k: int) -> list[list[dict[str, object]]]:
        probabilities = softmax(logits)
        k = max(1, min(k, len(self.class_names)))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[{"index": int(i), "label": self.class_names[i], "probability": float(p[i])} for i in row]
                for row, p in zip(order, probabilities)]

    async def start(self) -> None:
        for engine in self.engines:
            engine.batcher.start()

    async def stop(self) -> None:
        for engine in self.engines:
            await engine.batcher.stop()

