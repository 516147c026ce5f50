"""Numerical comparison of two runtimes' outputs, accumulated over batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vggexport.spec import ExportSpec


@dataclass
class Comparison:
    """Running statistics of candidate vs reference logits; ``update`` once per batch."""

    atol: float
    rtol: float
    samples: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    min_cosine: float = 1.0
    top1_agree: int = 0
    violations: int = 0  # elements outside atol + rtol * |reference|
    correct: int = 0
    reference_correct: int = 0
    labelled: int = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> None:
        if reference.shape != candidate.shape:
            raise AssertionError(f"output shape {candidate.shape} != reference {reference.shape}")
        ref, out = reference.astype(np.float64), candidate.astype(np.float64)
        diff = np.abs(out - ref)
        self.samples += len(ref)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.max_rel = max(self.max_rel, float((diff / np.maximum(np.abs(ref), 1e-6)).max(initial=0.0)))
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
        cosine = np.sum(ref * out, axis=1) / np.maximum(norms, 1e-30)
        self.min_cosine = min(self.min_cosine, float(cosine.min(initial=1.0)))
        self.top1_agree += int((ref.argmax(1) == out.argmax(1)).sum())
        self.violations += int((diff > self.atol + self.rtol * np.abs(ref)).sum())
        if labels is not None:
            self.labelled += len(labels)
            self.correct += int((out.argmax(1) == labels).sum())
            self.reference_correct += int((ref.argmax(1) == labels).sum())

    @property
    def top1_agreement(self) -> float:
        return self.top1_agree / self.samples if self.samples else 1.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def reference_accuracy(self) -> float | None:
        return self.reference_correct / self.labelled if self.labelled else None

    def failures(self, spec: ExportSpec, *, judge_top1: bool) -> list[str]:
        found = []
        if self.violations:
            found.append(f"{self.violations} values outside atol={self.atol:g} rtol={self.rtol:g} "
                         f"(max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g})")
        if judge_top1 and self.top1_agreement < spec.min_top1_agreement:
            found.append(f"top-1 agreement {self.top1_agreement:.4%} < {spec.min_top1_agreement:.2%} "
                         f"({self.samples - self.top1_agree} of {self.samples} differ)")
        return found

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(top1_agreement=self.top1_agreement, accuracy=self.accuracy,
                    reference_accuracy=self.reference_accuracy)
        return data


@dataclass
class RuntimeParity:
    runtime: str
    provider: str
    checks: dict[str, Comparison] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "provider": self.provider, "passed": self.passed, "error": self.error,
                "failures": self.failures, "checks": {k: v.to_dict() for k, v in self.checks.items()}}
