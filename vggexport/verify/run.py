"""Parity of runtimes against PyTorch eager fp32, down to test-set accuracy.

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
from vggexport.store.fileio import write_text_atomic
from vggexport.verify.compare import Comparison, RuntimeParity
from vggexport.backend.base import Runner
from vggexport.export.spec import AccuracyCriterion, ExportSpec


class ParityError(AssertionError):
    """Raised by ``assert_parity``; its message lists every failure."""


@dataclass
class Batch:
    """One batch of a check: the float input the reference takes, and the same images as raw pixels."""

    inputs: np.ndarray  # float32 (N, C, H, W), preprocessed
    labels: np.ndarray | None = None
    pixels: np.ndarray | None = None  # uint8 (N, C, h, w) before preprocessing, for pixel-input models


Batches = Callable[[], Iterable[Batch]]


@dataclass(frozen=True)
class Check:
    batches: Batches
    has_pixels: bool = False
    judge_top1: bool = False  # only real data: random inputs have near-ties
    pixels_only: bool = False  # photos before resizing: only a uint8-input model can take them


@dataclass
class Candidate:
    """A runner plus what verify knows of the artifact it runs."""

    runner: Runner
    takes_pixels: bool = False
    criterion: AccuracyCriterion | None = None  # None: elementwise tolerances (fp32)
    artifact: str | None = None
    sha256: str | None = None
    precision: str = "fp32"
    extra_failures: list[str] = field(default_factory=list)  # e.g. metadata that disagrees with the checkpoint


@dataclass
class ParityReport:
    model: str
    spec: ExportSpec
    runtimes: list[RuntimeParity] = field(default_factory=list)
    random_seed: int = 0
    real_complete: bool = False  # the real check covered the whole test split (no --samples, not --random-only)
    parity_files: list[Path] = field(default_factory=list)  # the parity.json files this run merged its verdicts into

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runtimes)

    def summary(self) -> str:
        lines = [f"{r.label}: {problem}" for r in self.runtimes
                 for problem in ([r.error] if r.error else []) + r.failures]
        return "\n".join(lines) or "all runtimes agree"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "passed": self.passed, "atol": self.spec.atol, "rtol": self.spec.rtol,
                "cuda_atol": self.spec.cuda_atol, "cuda_rtol": self.spec.cuda_rtol,
                "range_tol": self.spec.range_tol, "cuda_range_tol": self.spec.cuda_range_tol,
                "min_top1_agreement": self.spec.min_top1_agreement,
                "variants": {k: vars(v) for k, v in self.spec.variants.items()},
                "random_seed": self.random_seed, "real_complete": self.real_complete,
                "runtimes": [r.to_dict() for r in self.runtimes]}

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


def random_inputs(shape: tuple[int, int, int], batch_sizes: Iterable[int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"random-b{b}": rng.standard_normal((b, *shape), dtype=np.float32) for b in batch_sizes}


class FailureSaver:
    """Collects the samples a candidate gets wrong and writes them as .npz (``verify --save-failures``)."""

    def __init__(self, folder: Path | None, limit: int = 256) -> None:
        self.folder, self.limit = folder, limit
        self.kept: dict[str, list[tuple[np.ndarray, ...]]] = {}

    def add(self, key: str, mask: np.ndarray, batch: np.ndarray, reference: np.ndarray, candidate: np.ndarray,
            labels: np.ndarray | None) -> None:
        if self.folder is None or not mask.any():
            return
        kept = self.kept.setdefault(key, [])
        room = self.limit - sum(len(k[0]) for k in kept)
        if room > 0:
            index = np.flatnonzero(mask)[:room]
            no_labels = np.full(len(index), -1)
            kept.append((batch[index], reference[index], candidate[index],
                         no_labels if labels is None else labels[index]))

    def write(self) -> list[Path]:
        from vggexport.store.fileio import write_atomic

        written = []
        for key, parts in self.kept.items():
            arrays = dict(zip(("inputs", "reference", "candidate", "labels"), map(np.concatenate, zip(*parts))))
            written.append(write_atomic(Path(self.folder or ".") / f"{key}.npz",
                                        lambda tmp, a=arrays: save_npz(tmp, a)))
        return written


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to the temporary file's name
        np.savez(handle, **arrays)


def compare_candidate(reference_outputs: dict[str, list[np.ndarray]], candidate: Candidate, checks: dict[str, Check],
                      spec: ExportSpec, reference_provider: str = "cpu",
                      saver: FailureSaver | None = None) -> RuntimeParity:
    """Every check on one candidate; the runtime's own errors become its failure, never a traceback."""
    runner = candidate.runner
    result = RuntimeParity(runner.name, runner.provider, artifact=candidate.artifact, sha256=candidate.sha256,
                           precision=candidate.precision, failures=list(candidate.extra_failures))
    try:
        with runner:
            result.runtime, result.provider = runner.name, runner.provider
            atol, rtol, range_tol = spec.tolerances(reference_provider, runner.provider)
            result.tolerances = {"atol": atol, "rtol": rtol, "range_tol": range_tol}
            for name, check in checks.items():
                if ((candidate.takes_pixels and not check.has_pixels)
                        or (check.pixels_only and not candidate.takes_pixels)):
                    continue  # a pixel-input model cannot take float tensors, nor a float model raw photos
                comparison = Comparison(atol, rtol, range_tol)
                for reference, batch in zip(reference_outputs[name], check.batches()):
                    given = batch.pixels if candidate.takes_pixels else batch.inputs
                    output = runner.infer(given)
                    mask = comparison.update(reference, output, batch.labels)
                    if saver is not None:
                        key = f"{candidate.artifact or 'model'}-{runner.name}-{name}"
                        saver.add(key, mask, given, reference, output, batch.labels)
                result.checks[name] = comparison
                failures = comparison.failures(spec, judge_top1=check.judge_top1, criterion=candidate.criterion)
                result.failures += [f"[{name}] {f}" for f in failures]
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else ""
        result.error = first if isinstance(exc, VggExportError) else f"{type(exc).__name__}: {first}".rstrip(": ")
    return result


def reference_pass(reference: Runner, checks: dict[str, Check],
                   spec: ExportSpec) -> tuple[dict[str, list[np.ndarray]], RuntimeParity]:
    """Reference outputs once per check (real data is preprocessed per pass, so never twice)."""
    outputs: dict[str, list[np.ndarray]] = {}
    result = RuntimeParity(reference.name, reference.provider)
    with reference:
        result.provider = reference.provider
        for name, check in checks.items():
            produced, accuracy = [], Comparison(spec.atol, spec.rtol, spec.range_tol)
            for batch in check.batches():
                produced.append(reference.infer(batch.inputs))
                accuracy.update(produced[-1], produced[-1], batch.labels)
            outputs[name] = produced
            bad = sum(int((~np.isfinite(o)).sum()) for o in produced)
            if bad:
                result.error = (f"the PyTorch reference itself produced {bad} non-finite values in check {name!r}: "
                                f"the checkpoint is broken, so nothing can be compared against it")
                return outputs, result
            if accuracy.labelled:
                result.checks[name] = accuracy
    return outputs, result


def run_parity(reference: Runner, candidates: Iterable[Runner | Candidate], checks: dict[str, Check],
               spec: ExportSpec, model: str = "model", saver: FailureSaver | None = None) -> ParityReport:
    """Reference outputs once, then each candidate over the same batches; nothing stops at a failure."""
    reference_outputs, reference_result = reference_pass(reference, checks, spec)
    report = ParityReport(model, spec, [reference_result])
    if reference_result.error:
        return report
    for item in candidates:
        candidate = item if isinstance(item, Candidate) else Candidate(item)
        report.runtimes.append(compare_candidate(reference_outputs, candidate, checks, spec, reference.provider, saver))
    return report


def array_batches(arrays: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Batches:
    def produce() -> Iterator[Batch]:
        for start in range(0, len(arrays), batch_size):
            yield Batch(arrays[start : start + batch_size],
                        None if labels is None else labels[start : start + batch_size])
    return produce


def as_runner(source: Any, **kwargs: Any) -> Runner:
    """A runner from a runner, a torch module, or a path (.onnx, TorchScript, .pt2, checkpoint)."""
    from vggexport.backend.pytorch import TorchRunner
    from vggexport.backend.registry import artifact_kind, runner_for_file

    if isinstance(source, Runner):
        return source
    if isinstance(source, (str, Path)) and artifact_kind(Path(source)) is not None:
        return runner_for_file(Path(source), **kwargs)
    return TorchRunner(source, **kwargs)


def assert_parity(reference: Any, candidate: Any, inputs: np.ndarray | None = None, *,
                  labels: np.ndarray | None = None, spec: ExportSpec | None = None,
                  input_shape: tuple[int, int, int] | None = None) -> ParityReport:
    """Raise ``ParityError`` unless ``candidate`` matches ``reference`` within the spec's tolerances.

    ``reference``/``candidate``: a Runner, a torch module, or a path to a checkpoint,
    .onnx, .torchscript.pt or .pt2. Without ``inputs``, random batches of ``spec.batch_sizes``
    at ``input_shape`` (C, H, W) are used. With ``labels``, accuracy and 100 % top-1
    agreement are checked too. NaN or Inf in the candidate's output always fails.
    """
    spec = spec or ExportSpec()
    if inputs is not None:
        name = "real" if labels is not None else "given"
        checks = {name: Check(array_batches(inputs.astype(np.float32), labels, 256), judge_top1=labels is not None)}
    elif input_shape is not None:
        checks = {k: Check(array_batches(v, None, len(v)))
                  for k, v in random_inputs(input_shape, spec.batch_sizes).items()}
    else:
        raise ValueError("assert_parity needs inputs or input_shape")
    report = run_parity(as_runner(reference), [as_runner(candidate)], checks, spec)
    if not report.passed:
        raise ParityError(report.summary())
    return report
