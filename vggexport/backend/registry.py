"""Which runner runs which runtime: the one runtime-to-runner table (``make_runner``), and files by their names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggexport.backend.base import Runner
from vggexport.backend.onnxrt import OnnxRuntimeRunner
from vggexport.backend.pytorch import ExportedProgramRunner, TorchScriptRunner
from vggexport.errors import VggExportError
from vggexport.store.fileio import ModelSource


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
