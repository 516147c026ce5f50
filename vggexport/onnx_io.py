"""Loading vggexport ONNX files without torch: metadata and ONNX Runtime sessions.

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

from vggexport.errors import VggExportError
from vggexport.fileio import ArtifactBytes, ModelSource, artifact_of
from vggexport.manifest import read_checked
from vggexport.names import PROVIDERS

log = logging.getLogger("vggexport.onnx")
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
REQUIRED_KEYS = ("model_name", "class_names", "model_config")
# One CUDA configuration for verify, the benchmarks and the server, so what is served computes what was
# compared. TF32 off: true fp32, like the PyTorch reference. Heuristic conv search: cuDNN's exhaustive
# search benchmarks every algorithm again for each new input shape, and a server sees up to
# max-batch-size different batch shapes, so it would stall on each new one.
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}


def check_metadata(metadata: dict[str, str], path: Path) -> dict[str, str]:
    if "model_config" not in metadata:
        raise VggExportError(f"{path} is ONNX but not a vggexport export (no model_config metadata)")
    missing = [key for key in REQUIRED_KEYS if not metadata.get(key)]
    if missing:
        raise VggExportError(f"{path} lacks the metadata {', '.join(missing)}; re-export it with vggexport")
    return metadata


def read_onnx_artifact(source: ModelSource) -> ArtifactBytes:
    """The model's bytes, read once (unless already read) and checked against the manifest."""
    return read_checked(source, f"no ONNX model at {source}: run `vggexport onnx` first")


def parse_onnx(artifact: ArtifactBytes) -> Any:
    """The ModelProto of these bytes (external data is never loaded: it would be bytes no hash covers)."""
    import onnx

    if not artifact.data:
        raise VggExportError(f"{artifact.path} is empty (0 bytes): not a readable ONNX model")
    try:
        return onnx.load_model_from_string(artifact.data)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own; all mean "not ONNX"
        raise VggExportError(f"{artifact.path} is not a readable ONNX model ({type(exc).__name__})") from None


def read_onnx_metadata(source: ModelSource) -> dict[str, str]:
    """The metadata_props of a vggexport ONNX file (onnx package, no session), or a clear error."""
    artifact = read_onnx_artifact(source)
    proto = parse_onnx(artifact)
    return check_metadata({p.key: p.value for p in proto.metadata_props}, artifact.path)


def session_metadata(session: Any, path: Path) -> dict[str, str]:
    return check_metadata(dict(session.get_modelmeta().custom_metadata_map), path)


def first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]


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
    from vggexport.cuda_libs import captured_native_stderr, ort_error

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
    """Load the nvidia-* wheels' CUDA/cuDNN libraries from wherever they are importable (vggexport.cuda_libs);
    returns what could not be loaded. Not fatal by itself: the session's provider check decides.
    """
    cuda_version = str(getattr(ort, "cuda_version", "") or "")
    if not cuda_version.split(".")[0].isdigit():
        return []  # an onnxruntime without CUDA: nothing to load for it
    from vggexport.cuda_libs import find_cuda_libraries, load_cuda_libraries

    phase("loading the CUDA and cuDNN libraries")
    libraries = find_cuda_libraries(int(cuda_version.split(".")[0]))
    problems = load_cuda_libraries(libraries)
    for problem in problems:
        phase(problem)
    return problems


ONNX_ELEMENT_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "FP64"}


def graph_io(source: ModelSource) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """([(name, v2 datatype, dims)] of the inputs, same of the outputs); -1 marks a dynamic dimension."""
    graph = parse_onnx(artifact_of(source)).graph

    def describe(values: Any) -> list[tuple[str, str, list[int]]]:
        found = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            found.append((value.name, ONNX_ELEMENT_TYPES.get(tensor.elem_type, f"onnx type {tensor.elem_type}"), dims))
        return found

    initializers = {init.name for init in graph.initializer}
    return describe(v for v in graph.input if v.name not in initializers), describe(graph.output)
