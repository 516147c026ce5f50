"""The serving runner: the runner contract over a torch-free ONNX Runtime session.

Unlike verify's ``OnnxRuntimeRunner`` it returns every graph output (the
preprocessing model also gives the pixels it saw), takes its input spec from the
session (FP32 or UINT8, fixed or dynamic H and W), logs each start-up phase, and
on CUDA uses IO binding so outputs land in host memory without another copy.
Given ``ArtifactBytes`` (what the verified-only gate checked) it loads exactly those bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vggexport.names import ORT_TO_V2
from vggexport.store.fileio import ArtifactBytes, ModelSource
from vggexport.backend.onnxrt import CUDA_EP
from vggexport.backend.onnxrt import OnnxRuntimeRunner



class ServingRunner(OnnxRuntimeRunner):
    def __init__(self, source: ModelSource, *, provider: str = "cpu", threads: int | None = None,
                 phase: Callable[[str], None] | None = None) -> None:
        super().__init__(source, provider=provider, threads=threads, spinning=False, phase=phase)
        self.output_names: list[str] = []
        self.feed_name, self.cuda = "", False  # the session's, read once per session: infer_all runs per batch

    def activate_impl(self) -> None:
        if self.source is None:
            raise RuntimeError("a ServingRunner made from bytes loads them once; make a new runner to load again")
        self.open_session(self.source)  # the session's own metadata: no second parse of the file at start-up
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.feed_name, self.cuda = self.input_name, self.session.get_providers()[0] == CUDA_EP
        if isinstance(self.source, ArtifactBytes):
            # The session holds the model now; another copy of the file per worker would only cost memory.
            self.source = None

    @property
    def on_cuda(self) -> bool:
        return self.session is not None and self.cuda

    @property
    def input_spec(self) -> Any:
        return self.session.get_inputs()[0]

    @property
    def input_datatype(self) -> str:
        return ORT_TO_V2.get(self.input_spec.type, self.input_spec.type)

    @property
    def input_shape(self) -> list[int]:
        """The v2 shape: -1 for every dynamic dimension (the batch, and H, W of the preprocessing model)."""
        return v2_shape(self.input_spec.shape)

    @property
    def output_shapes(self) -> list[list[int]]:
        return [v2_shape(output.shape) for output in self.session.get_outputs()]

    def infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        if self.cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.feed_name, np.ascontiguousarray(batch))
            for name in self.output_names:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            return list(binding.copy_outputs_to_cpu())
        return list(self.session.run(None, {self.feed_name: batch}))

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_all(batch)[0]


def v2_shape(dims: list[Any]) -> list[int]:
    """ONNX Runtime's shape (ints, names or None) as v2 dims: -1 for every dynamic dimension."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]
