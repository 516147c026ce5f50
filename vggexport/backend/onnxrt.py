"""ONNX Runtime, torch-free: sessions on CPU or CUDA, the provider choice, and the runner over them.

The serving process imports this and never ``vggexport.export`` (which needs torch):
a session's own ``get_modelmeta().custom_metadata_map`` carries the labels and
preprocessing. Each function takes a path or the ``ArtifactBytes`` a caller already read (and
hashed): given bytes, it parses and loads those bytes, never the file on disk again.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vggexport.errors import VggExportError, first_line
from vggexport.store.fileio import ArtifactBytes, ModelSource
from vggexport.store.onnx_file import check_metadata, read_onnx_artifact, read_onnx_metadata
from vggexport.backend.base import Runner, source_path
from vggexport.names import ORT_TO_V2, PROVIDERS, V2_TO_NUMPY

log = logging.getLogger("vggexport.onnx")
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
# One CUDA configuration for verify, the benchmarks and the server, so what is served computes what was
# compared. TF32 off: true fp32, like the PyTorch reference. Heuristic conv search: cuDNN's exhaustive
# search benchmarks every algorithm again for each new input shape, and a server sees up to
# max-batch-size different batch shapes, so it would stall on each new one.
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}


def session_metadata(session: Any, path: Path) -> dict[str, str]:
    return check_metadata(dict(session.get_modelmeta().custom_metadata_map), path)


class Phases:
    """Start-up logs each phase with its time, so a slow or stuck start shows where it is."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.say = say or log.info
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.say(f"[{time.perf_counter() - self.started:6.2f}s] {message}")


@functools.cache  # the driver's answer does not change within a process; cuInit is not free on a GPU machine
def cuda_device_count() -> int:
    """GPUs the NVIDIA driver sees, asked of the driver library alone (libcuda), never of the CUDA toolkit.

    0 where there is no driver: then nothing of CUDA is loaded, so ``--provider auto`` on a CPU machine
    costs no CUDA libraries (onnxruntime-gpu lists its CUDA provider whether or not a GPU exists).
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0  # a driver without a usable device (CUDA_VISIBLE_DEVICES="", a container without the GPU)
    return count.value


def resolve_provider(provider: str, *, gpus: Callable[[], int] = cuda_device_count) -> str:
    """``cpu`` or ``cuda``: what ``provider`` (auto, cpu, cuda) means on this machine.

    ``auto`` is CUDA only where the NVIDIA driver sees a GPU and this onnxruntime has the CUDA provider;
    elsewhere nothing of CUDA is loaded. ``gpus`` is injectable for tests.
    """
    if provider not in PROVIDERS:
        raise VggExportError(f"unknown provider {provider!r}: use auto, cuda or cpu")
    if provider != "auto":
        return provider
    if gpus() < 1:
        return "cpu"
    import onnxruntime as ort

    return "cuda" if CUDA_EP in ort.get_available_providers() else "cpu"


def load_session(source: ModelSource, *, provider: str = "cpu", options: Any = None,
                 phase: Callable[[str], None] | None = None) -> tuple[Any, dict[str, str]]:
    """(ONNX Runtime session, vggexport metadata) from the model's bytes. ``provider``: cpu, cuda or auto.

    ``cuda`` fails in one line, naming why, when the CUDA provider does not start, instead of
    ORT's silent CPU fallback (microsoft/onnxruntime#23372).
    """
    phase = phase or Phases()
    resolved = resolve_provider(provider)
    artifact = read_onnx_artifact(source)
    if not artifact.data:
        raise VggExportError(f"{artifact.path} is empty (0 bytes): not a readable ONNX model")
    phase("importing onnxruntime")
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only
    if resolved == "cuda":
        session = cuda_session(ort, artifact, options, required=provider == "cuda", phase=phase)
    else:
        session = create_session(ort, artifact, options, [CPU_EP], phase)
    phase(f"session ready on {session.get_providers()[0]}")
    return session, session_metadata(session, artifact.path)


def create_session(ort: Any, artifact: ArtifactBytes, options: Any, providers: list[Any],
                   phase: Callable[[str], None]) -> Any:
    names = [p if isinstance(p, str) else p[0] for p in providers]
    phase(f"creating the session for {artifact.path.name} on {names}")
    try:
        return ort.InferenceSession(artifact.data, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind types (Fail, InvalidGraph, ...)
        raise VggExportError(f"ONNX Runtime cannot load {artifact.path}: {first_line(exc)}") from None


def cuda_session(ort: Any, artifact: ArtifactBytes, options: Any, *, required: bool,
                 phase: Callable[[str], None]) -> Any:
    """The session on CUDA; when the CUDA provider does not start, ``required`` (``--provider cuda``) fails in
    one line saying why, else (auto on a GPU machine) the CPU session is kept and why is logged.

    ORT logs its reason (a library that did not load) to fd 2 in colour over several lines and falls back;
    the session is created with that captured, so the reason becomes part of our one line.
    """
    from vggexport.backend.cuda_libs import captured_native_stderr, ort_error

    problems = preload_cuda_libraries(ort, phase)
    with captured_native_stderr() as captured:
        session = create_session(ort, artifact, options, [(CUDA_EP, CUDA_OPTIONS), CPU_EP], phase)
    if CUDA_EP in session.get_providers():
        sys.stderr.write("".join(f"{line}\n" for line in captured))  # not a reason for anything: shown as ORT would
        return session
    reason = problems[0] if problems else ort_error(captured) or "no usable GPU"
    if required:
        raise VggExportError(f"the CUDA execution provider did not start: {reason}; use --provider cpu or auto")
    phase(f"the CUDA execution provider did not start ({reason}); running on the CPU")
    return session


def preload_cuda_libraries(ort: Any, phase: Callable[[str], None]) -> list[str]:
    """Load the nvidia-* wheels' CUDA/cuDNN libraries from wherever they are importable (vggexport.backend.cuda_libs);
    returns what could not be loaded. Not fatal by itself: the session's provider check decides.
    """
    cuda_version = str(getattr(ort, "cuda_version", "") or "")
    if not cuda_version.split(".")[0].isdigit():
        return []  # an onnxruntime without CUDA: nothing to load for it
    from vggexport.backend.cuda_libs import find_cuda_libraries, load_cuda_libraries

    phase("loading the CUDA and cuDNN libraries")
    libraries = find_cuda_libraries(int(cuda_version.split(".")[0]))
    problems = load_cuda_libraries(libraries)
    for problem in problems:
        phase(problem)
    return problems


def default_threads(runs_at_once: int = 1) -> int:
    """Intra-op threads when none are asked for: a session's runs share its one pool of this many - 1 threads,
    and each run adds its calling thread, so N runs at once fill the cores this process may use with cores - N + 1."""
    import os

    return max(1, len(os.sched_getaffinity(0)) - runs_at_once + 1)


def session_options(*, threads: int | None = None, spinning: bool = True) -> Any:
    """The tuned CPU session (see tools/bench_infer.py and BENCHMARKS.md for why these values)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or default_threads()
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
        artifact = read_onnx_artifact(self.source)
        read_onnx_metadata(artifact)  # a corrupt or foreign file is named as such before ORT tries it
        self.open_session(artifact)

    def open_session(self, source: ModelSource) -> None:
        """The session on the requested provider, configured as everywhere (vggexport.backend.onnxrt.load_session)."""
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
        dtype = V2_TO_NUMPY.get(ORT_TO_V2.get(spec.type, ""))
        if dtype is not None and batch.dtype != dtype:
            raise VggExportError(f"input dtype {batch.dtype} does not match the model's {np.dtype(dtype).name}")
        fixed = [d if isinstance(d, int) else None for d in spec.shape]
        if batch.ndim != len(fixed) or any(f is not None and f != n for f, n in zip(fixed, batch.shape)):
            wanted = ", ".join(str(d) for d in spec.shape)
            raise VggExportError(f"input shape {tuple(batch.shape)} does not match the model's ({wanted})")

    def deactivate_impl(self) -> None:
        self.session = None
