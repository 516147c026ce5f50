"""One runner contract for every backend (Polygraphy's BaseRunner is the model).

``activate`` loads, ``infer`` maps a float32 NCHW batch to logits, ``deactivate``
frees; a runner is also a context manager. verify, the benchmarks and the
server all go through these, so they all measure and serve the same thing.

A file runner's source is a path or the ``ArtifactBytes`` its caller already read and
hashed; given bytes it loads exactly those (a path is read once, at activation), so
what verify records and what the gate checks is what ran.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from vggexport.errors import VggExportError
from vggexport.fileio import ArtifactBytes, ModelSource
from vggexport.onnx_io import CPU_EP, CUDA_EP, load_session, resolve_provider


class Runner(ABC):
    name: str = "runner"

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> Runner:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        return self.infer_impl(batch)

    @property
    @abstractmethod
    def provider(self) -> str:
        """What actually computes: a torch device or an ONNX Runtime execution provider."""

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:
        """Drop references; subclasses with more to free override this."""

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()


class TorchRunner(Runner):
    """PyTorch eager from a module or a checkpoint path. fp32 with TF32 off: the reference."""

    name = "pytorch"

    def __init__(self, source: Any, *, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__()
        self.source, self.device_name, self.precision = source, device, precision
        self.model: Any = None

    @property
    def provider(self) -> str:
        return self.device_name if self.precision == "fp32" else f"{self.device_name} {self.precision} autocast"

    def activate_impl(self) -> None:
        import torch

        from vggexport.hardware import resolve_device

        resolve_device(self.device_name)  # a clear error when CUDA is asked for and absent
        if self.device_name.startswith("cuda"):
            # TF32 would make the reference itself ~1e-3 off; parity is judged against true fp32.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.model = self.load()

    def load(self) -> Any:
        from vggexport.checkpoint import load_checkpoint

        if isinstance(self.source, (str, Path)):
            return load_checkpoint(self.source).build_model(self.device_name)
        return self.source.to(self.device_name).eval()

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from vggexport.hardware import autocast

        with torch.inference_mode(), autocast(torch.device(self.device_name), self.precision):
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device_name))
        return out.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self.model = None


def source_path(source: ModelSource) -> Path:
    return source.path if isinstance(source, ArtifactBytes) else Path(source)


class TorchScriptRunner(TorchRunner):
    name = "torchscript"

    def __init__(self, source: ModelSource, *, device: str = "cpu") -> None:
        super().__init__(source, device=device)
        self.metadata: dict[str, Any] = {}

    def load(self) -> Any:
        from vggexport.export import load_torchscript

        model, self.metadata = load_torchscript(self.source, self.device_name)
        return model


class ExportedProgramRunner(TorchRunner):
    """A ``torch.export`` program (model.pt2) on cpu or cuda."""

    name = "torch-export"

    def __init__(self, source: ModelSource, *, device: str = "cpu") -> None:
        super().__init__(source, device=device)
        self.metadata: dict[str, Any] = {}

    def load(self) -> Any:
        from vggexport.exported_program import load_module

        model, self.metadata = load_module(self.source, self.device_name)
        return model

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        try:
            return super().infer_impl(batch)
        except AssertionError:
            # The program's shape guards fail with an AssertionError naming an internal symbol.
            size, channels = self.metadata.get("image_size", "?"), self.metadata.get("in_channels", "?")
            raise VggExportError(f"input shape {tuple(batch.shape)} does not match the program's "
                                 f"(batch, {channels}, {size}, {size})") from None


ORT_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def session_options(*, threads: int | None = None, spinning: bool = True) -> Any:
    """The tuned CPU session (see tools/bench_infer.py and BENCHMARKS.md for why these values)."""
    import os

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.log_severity_level = 3
    if not spinning:
        # A server shares its cores with the event loop: idle ORT threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with an explicit provider: cpu, cuda, or auto (CUDA only on a GPU machine, when it starts).

    ORT silently falls back to CPU when the CUDA provider cannot start
    (microsoft/onnxruntime#23372); asking for cuda here fails loudly instead.
    """

    def __init__(self, source: ModelSource, *, provider: str = "cpu", threads: int | None = None,
                 spinning: bool = True, phase: Callable[[str], None] | None = None) -> None:
        super().__init__()
        # Resolved now, so name and provider say cpu or cuda from the start: auto is CUDA only on a GPU machine.
        self.resolved = resolve_provider(provider)
        self.source: ModelSource | None = source
        self.path = source_path(source)
        self.requested, self.threads, self.spinning, self.phase = provider, threads, spinning, phase
        self.session: Any = None
        self.metadata: dict[str, str] = {}
        self.name = f"onnxruntime-{self.resolved}"

    @property
    def provider(self) -> str:
        """The session's execution provider; before it opens, the one it will ask for (auto may still fall back)."""
        if self.session is not None:
            return str(self.session.get_providers()[0])
        return CUDA_EP if self.resolved == "cuda" else CPU_EP

    @property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    def activate_impl(self) -> None:
        from vggexport.onnx_io import read_onnx_artifact, read_onnx_metadata

        artifact = read_onnx_artifact(self.source)
        read_onnx_metadata(artifact)  # a corrupt or foreign file is named as such before ORT tries it
        self.open_session(artifact)

    def open_session(self, source: ModelSource) -> None:
        """The session on the requested provider, configured as everywhere (vggexport.onnx_io.load_session)."""
        options = session_options(threads=self.threads, spinning=self.spinning)
        self.session, self.metadata = load_session(source, provider=self.requested, options=options,
                                                   phase=self.phase)
        self.name = "onnxruntime-cuda" if self.provider == CUDA_EP else "onnxruntime-cpu"

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        self.check_input(batch)
        return self.session.run(None, {self.input_name: batch})[0]

    def check_input(self, batch: np.ndarray) -> None:
        """A wrong shape or dtype is the caller's mistake: say so in one line, not with ORT's stack."""
        spec = self.session.get_inputs()[0]
        dtype = ORT_DTYPES.get(spec.type)
        if dtype is not None and batch.dtype != dtype:
            raise VggExportError(f"input dtype {batch.dtype} does not match the model's {np.dtype(dtype).name}")
        fixed = [d if isinstance(d, int) else None for d in spec.shape]
        if batch.ndim != len(fixed) or any(f is not None and f != n for f, n in zip(fixed, batch.shape)):
            wanted = ", ".join(str(d) for d in spec.shape)
            raise VggExportError(f"input shape {tuple(batch.shape)} does not match the model's ({wanted})")

    def deactivate_impl(self) -> None:
        self.session = None


ARTIFACT_KINDS = ("onnx", "torchscript", "torch-export")
RUNTIMES_BY_KIND = {"onnx": "onnxruntime", "torchscript": "torchscript", "torch-export": "torch-export"}


def artifact_kind(path: Path) -> str | None:
    """Which runtime family runs a file, from its name: .onnx, .torchscript.pt or .pt2."""
    name = path.name
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".torchscript.pt"):
        return "torchscript"
    if name.endswith(".pt2"):
        return "torch-export"
    return None


def runtimes_for(kind: str, *, cuda: bool) -> list[str]:
    """The runtimes (names of ``vggexport.names.RUNTIMES``) that run an artifact of ``kind``."""
    family = RUNTIMES_BY_KIND[kind]
    if family == "onnxruntime":
        return ["onnxruntime-cpu", *(["onnxruntime-cuda"] if cuda else [])]
    return [family, *([f"{family}-cuda"] if cuda else [])]


def make_runner(runtime: str, source: ModelSource, **kwargs: Any) -> Runner:
    """Runner for a runtime name of ``vggexport.names.RUNTIMES`` over one artifact file (or its bytes)."""
    device = "cuda" if runtime.endswith("-cuda") else "cpu"
    runner: Runner
    if runtime in ("torchscript", "torchscript-cuda"):
        runner = TorchScriptRunner(source, device=device)
    elif runtime in ("torch-export", "torch-export-cuda"):
        runner = ExportedProgramRunner(source, device=device)
    elif runtime in ("onnxruntime-cpu", "onnxruntime-cuda"):
        return OnnxRuntimeRunner(source, provider=device, **kwargs)
    else:
        raise VggExportError(f"unknown runtime {runtime!r}")
    runner.name = runtime
    return runner


def runner_for_file(path: Path, **kwargs: Any) -> Runner:
    """The CPU runner for a file, chosen by its name (what ``assert_parity`` takes)."""
    kind = artifact_kind(path)
    if kind is None:
        raise VggExportError(f"cannot tell how to run {path}: expected .onnx, .torchscript.pt or .pt2")
    if kind == "onnx":
        return OnnxRuntimeRunner(path, **kwargs)
    return make_runner(runtimes_for(kind, cuda=False)[0], path)
