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
from pathlib import Path
from types import TracebackType

import numpy as np

from vggexport.store.fileio import ArtifactBytes, ModelSource


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


def source_path(source: ModelSource) -> Path:
    return source.path if isinstance(source, ArtifactBytes) else Path(source)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of a (N, classes) batch of logits, float32, computed in float64 so no row overflows."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
