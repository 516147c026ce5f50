"""Numerical comparison of two runtimes' outputs, accumulated over batches.

Non-finite values are checked before anything is compared (Polygraphy's comparators do the
same): ``diff > tol`` is False for NaN, so a NaN output would otherwise count as agreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vggexport.export.spec import AccuracyCriterion, ExportSpec


@dataclass
class Comparison:
    """Running statistics of candidate vs reference logits; ``update`` once per batch."""

    atol: float
    rtol: float
    range_tol: float = 1e-3  # the largest difference may be this fraction of the reference's range (spec.py)
    samples: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    min_cosine: float = 1.0
    top1_agree: int = 0
    violations: int = 0  # finite elements outside atol + rtol * |reference|
    nonfinite: int = 0  # NaN or Inf elements in the candidate's output
    max_relative_error: float = 0.0  # per sample: ||candidate - reference|| / ||reference||
    relative_errors: list[np.ndarray] = field(default_factory=list, repr=False)
    correct: int = 0
    reference_correct: int = 0
    labelled: int = 0
    abs_diffs: list[np.ndarray] = field(default_factory=list, repr=False)
    reference_min: float = np.inf  # over the reference's finite values, for the range the error is judged by
    reference_max: float = -np.inf

    def update(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Fold one batch in; returns a per-sample mask of the samples that disagree (for --save-failures)."""
        if reference.shape != candidate.shape:
            raise AssertionError(f"output shape {candidate.shape} != reference {reference.shape}")
        ref, out = reference.astype(np.float64), candidate.astype(np.float64)
        finite = np.isfinite(out)
        self.nonfinite += int((~finite).sum())
        # Statistics over finite values only; non-finite ones are counted above and fail on their own.
        diff = np.where(finite, np.abs(np.where(finite, out, 0.0) - ref), 0.0)
        self.samples += len(ref)
        known = ref[np.isfinite(ref)]
        if known.size:
            self.reference_min = min(self.reference_min, float(known.min()))
            self.reference_max = max(self.reference_max, float(known.max()))
        self.abs_diffs.append(diff[finite].astype(np.float32))
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.max_rel = max(self.max_rel, float((diff / np.maximum(np.abs(ref), 1e-6)).max(initial=0.0)))
        safe = np.where(finite, out, 0.0)
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(safe, axis=1)
        cosine = np.where(finite.all(axis=1), np.sum(ref * safe, axis=1) / np.maximum(norms, 1e-30), -1.0)
        self.min_cosine = min(self.min_cosine, float(cosine.min(initial=1.0)))
        relative = np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
        self.max_relative_error = max(self.max_relative_error, float(relative.max(initial=0.0)))
        self.relative_errors.append(np.where(finite.all(axis=1), relative, np.inf).astype(np.float32))
        agree = (ref.argmax(1) == safe.argmax(1)) & finite.all(axis=1)
        self.top1_agree += int(agree.sum())
        exceeds = diff > self.atol + self.rtol * np.abs(ref)
        self.violations += int(exceeds.sum())
        if labels is not None:
            self.labelled += len(labels)
            self.correct += int(((safe.argmax(1) == labels) & finite.all(axis=1)).sum())
            self.reference_correct += int((ref.argmax(1) == labels).sum())
        return (exceeds | ~finite).any(axis=1) | ~agree

    @property
    def top1_agreement(self) -> float:
        return self.top1_agree / self.samples if self.samples else 1.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def reference_accuracy(self) -> float | None:
        return self.reference_correct / self.labelled if self.labelled else None

    @property
    def reference_range(self) -> float:
        return max(self.reference_max - self.reference_min, 0.0)

    @property
    def range_error(self) -> float:
        """max |candidate - reference| / (max - min of the reference): scale-aware where atol is not.

        A constant reference (range 0) leaves nothing to scale by: any difference then counts in full.
        """
        if not self.samples or self.max_abs == 0:
            return 0.0
        return self.max_abs / self.reference_range if self.reference_range > 0 else float("inf")

    @property
    def median_relative_error(self) -> float:
        values = np.concatenate(self.relative_errors) if self.relative_errors else np.zeros(1, np.float32)
        return float(np.median(values))

    def diff_percentiles(self) -> dict[str, float]:
        """Mean, median and p99 of |candidate - reference| over every finite output element."""
        values = np.concatenate(self.abs_diffs) if self.abs_diffs else np.zeros(0, np.float32)
        if not values.size:
            return {"mean_abs": 0.0, "median_abs": 0.0, "p99_abs": 0.0}
        return {"mean_abs": float(values.mean(dtype=np.float64)), "median_abs": float(np.median(values)),
                "p99_abs": float(np.percentile(values, 99))}

    def failures(self, spec: ExportSpec, *, judge_top1: bool, criterion: AccuracyCriterion | None = None) -> list[str]:
        """Why this check fails; ``criterion`` (precision variants) replaces elementwise tolerances."""
        found = []
        if self.nonfinite:
            found.append(f"{self.nonfinite} non-finite values (NaN or Inf) in the output")
        if criterion is not None:
            limit = criterion.max_relative_error_real if judge_top1 else criterion.max_relative_error_random
            if self.median_relative_error > limit:
                found.append(f"logits differ by a median {self.median_relative_error:.3g} of their norm (allowed "
                             f"{limit:g} for {criterion.name})")
            return found + (self.accuracy_failures(criterion) if judge_top1 else [])
        if self.violations:
            found.append(f"{self.violations} values outside atol={self.atol:g} rtol={self.rtol:g} "
                         f"(max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g})")
        if self.range_error > self.range_tol:
            found.append(f"max abs diff {self.max_abs:.3g} is {self.range_error:.3g} of the reference's range "
                         f"{self.reference_range:.3g} (allowed {self.range_tol:g}): a scaled or shifted output")
        if judge_top1 and self.top1_agreement < spec.min_top1_agreement:
            found.append(f"top-1 agreement {self.top1_agreement:.4%} < {spec.min_top1_agreement:.2%} "
                         f"({self.samples - self.top1_agree} of {self.samples} differ)")
        return found

    def accuracy_failures(self, criterion: AccuracyCriterion) -> list[str]:
        found = []
        if self.top1_agreement < criterion.min_top1_agreement:
            found.append(f"top-1 agreement {self.top1_agreement:.4%} < {criterion.min_top1_agreement:.2%} "
                         f"({criterion.name})")
        if self.accuracy is None or self.reference_accuracy is None:
            found.append(f"{criterion.name} variants are judged by accuracy: the check needs labelled real data")
        elif self.reference_accuracy - self.accuracy > criterion.max_accuracy_drop:
            found.append(f"accuracy {self.accuracy:.4f} is {100 * (self.reference_accuracy - self.accuracy):.2f} "
                         f"points below PyTorch fp32's {self.reference_accuracy:.4f} "
                         f"(allowed {100 * criterion.max_accuracy_drop:.2f} for {criterion.name})")
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinity (no finite reference value, a constant reference) is written as null."""
        data = {k: v for k, v in vars(self).items() if k not in ("abs_diffs", "relative_errors")}
        data.update(self.diff_percentiles(), top1_agreement=self.top1_agreement, accuracy=self.accuracy,
                    reference_range=self.reference_range, range_error=self.range_error,
                    reference_accuracy=self.reference_accuracy, median_relative_error=self.median_relative_error)
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in data.items()}


@dataclass
class RuntimeParity:
    """One artifact file on one runtime: its checks, its failures, or the error that stopped it."""

    runtime: str
    provider: str
    checks: dict[str, Comparison] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    artifact: str | None = None  # file name; None for the reference
    sha256: str | None = None
    precision: str = "fp32"
    tolerances: dict[str, float] = field(default_factory=dict)  # atol/rtol/range_tol applied (CUDA's are looser)

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.artifact}" if self.artifact else self.runtime

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "provider": self.provider, "artifact": self.artifact,
                "sha256": self.sha256, "precision": self.precision, "passed": self.passed, "error": self.error,
                "failures": self.failures, "tolerances": self.tolerances,
                "checks": {k: v.to_dict() for k, v in self.checks.items()}}
