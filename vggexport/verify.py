"""Parity of every exported runtime against PyTorch eager fp32, down to test-set accuracy.

Every check runs and every failure is collected; then one error is raised (or
one table printed) with the worst difference per runtime. ``assert_parity`` is
the same check for users' own pytest suites.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vggexport.errors import VggExportError
from vggexport.fileio import write_text_atomic
from vggexport.parity import Comparison, RuntimeParity
from vggexport.runners import Runner
from vggexport.spec import ExportSpec

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray | None]]]


class ParityError(AssertionError):
    """Raised by ``assert_parity``; its message lists every failure."""


@dataclass
class ParityReport:
    model: str
    spec: ExportSpec
    runtimes: list[RuntimeParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runtimes)

    def summary(self) -> str:
        lines = [f"{r.runtime}: {problem}" for r in self.runtimes for problem in ([r.error] if r.error else []) + r.failures]
        return "\n".join(lines) or "all runtimes agree"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "passed": self.passed, "atol": self.spec.atol, "rtol": self.spec.rtol,
                "cuda_atol": self.spec.cuda_atol, "cuda_rtol": self.spec.cuda_rtol,
                "min_top1_agreement": self.spec.min_top1_agreement,
                "runtimes": [r.to_dict() for r in self.runtimes]}

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


def random_inputs(shape: tuple[int, int, int], batch_sizes: Iterable[int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"random-b{b}": rng.standard_normal((b, *shape), dtype=np.float32) for b in batch_sizes}


def compare_runner(reference_outputs: dict[str, list[np.ndarray]], runner: Runner, inputs: dict[str, Batches],
                   spec: ExportSpec, reference_provider: str = "cpu") -> RuntimeParity:
    result = RuntimeParity(runner.name, runner.provider)
    try:
        with runner:
            result.runtime, result.provider = runner.name, runner.provider
            atol, rtol = spec.tolerances(reference_provider, runner.provider)
            for check, batches in inputs.items():
                comparison = Comparison(atol, rtol)
                for reference, (batch, labels) in zip(reference_outputs[check], batches()):
                    comparison.update(reference, runner.infer(batch), labels)
                result.checks[check] = comparison
                result.failures += [f"[{check}] {f}" for f in comparison.failures(spec, judge_top1=check == "real")]
    except (VggExportError, AssertionError, RuntimeError, ValueError) as exc:
        result.error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return result


def run_parity(reference: Runner, candidates: Iterable[Runner], inputs: dict[str, Batches], spec: ExportSpec,
               model: str = "model") -> ParityReport:
    """Reference outputs once, then each candidate over the same batches; nothing stops at a failure."""
    with reference:
        # One pass over each check's batches: real data is preprocessed per pass, so don't pass twice.
        reference_outputs: dict[str, list[np.ndarray]] = {}
        reference_result = RuntimeParity(reference.name, reference.provider)
        for check, batches in inputs.items():
            outputs, accuracy = [], Comparison(spec.atol, spec.rtol)
            for batch, labels in batches():
                outputs.append(reference.infer(batch))
                if labels is not None:
                    accuracy.update(outputs[-1], outputs[-1], labels)
            reference_outputs[check] = outputs
            if accuracy.labelled:
                reference_result.checks[check] = accuracy
    report = ParityReport(model, spec)
    report.runtimes.append(reference_result)
    for runner in candidates:
        report.runtimes.append(compare_runner(reference_outputs, runner, inputs, spec, reference.provider))
    return report


def array_batches(arrays: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Batches:
    def produce() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for start in range(0, len(arrays), batch_size):
            yield arrays[start : start + batch_size], None if labels is None else labels[start : start + batch_size]
    return produce


def as_runner(source: Any, **kwargs: Any) -> Runner:
    """A runner from a runner, a torch module, or a path (.onnx, TorchScript, checkpoint)."""
    from vggexport.runners import OnnxRuntimeRunner, TorchRunner, TorchScriptRunner

    if isinstance(source, Runner):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix == ".onnx":
            return OnnxRuntimeRunner(path, **kwargs)
        if path.name.endswith(".torchscript.pt"):
            return TorchScriptRunner(path, **kwargs)
    return TorchRunner(source, **kwargs)


def assert_parity(reference: Any, candidate: Any, inputs: np.ndarray | None = None, *,
                  labels: np.ndarray | None = None, spec: ExportSpec | None = None,
                  input_shape: tuple[int, int, int] | None = None) -> ParityReport:
    """Raise ``ParityError`` unless ``candidate`` matches ``reference`` within the spec's tolerances.

    ``reference``/``candidate``: a Runner, a torch module, or a path to a checkpoint,
    .onnx or .torchscript.pt. Without ``inputs``, random batches of ``spec.batch_sizes``
    at ``input_shape`` (C, H, W) are used. With ``labels``, accuracy and 100 % top-1
    agreement are checked too.
    """
    spec = spec or ExportSpec()
    if inputs is not None:
        checks = {"real" if labels is not None else "given": array_batches(inputs.astype(np.float32), labels, 256)}
    elif input_shape is not None:
        checks = {k: array_batches(v, None, len(v)) for k, v in random_inputs(input_shape, spec.batch_sizes).items()}
    else:
        raise ValueError("assert_parity needs inputs or input_shape")
    report = run_parity(as_runner(reference), [as_runner(candidate)], checks, spec)
    if not report.passed:
        raise ParityError(report.summary())
    return report
