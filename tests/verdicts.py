"""Verdicts the tests record without running verify on that runtime: a real CPU report renamed to another runtime
(how a CUDA verdict exists on a machine without a GPU), merged into parity.json as verify merges it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def renamed_report(report: dict[str, Any], runtime: str, *, passed: bool = True, samples: int | None = None) -> Any:
    """A verify report (``ParityReport.to_dict()`` of a real run) with its results renamed to ``runtime``, as a
    run on that runtime would have recorded them: how the tests get a CUDA verdict on a machine without a GPU.
    ``samples``: the real check covered only that many images."""
    from types import SimpleNamespace

    data = copy.deepcopy(report)
    on_cuda = runtime.endswith("-cuda")
    if on_cuda:  # verify on a GPU compares with PyTorch on the GPU, at CUDA's looser tolerances
        data["runtimes"][0]["provider"] = "cuda"
    for result in data["runtimes"][1:]:
        result["runtime"] = runtime
        if on_cuda:
            result["provider"] = "CUDAExecutionProvider"
            result["tolerances"] = {"atol": data["cuda_atol"], "rtol": data["cuda_rtol"]}
        if not passed:
            result["passed"], result["failures"] = False, ["[real] top-1 agreement 97.00% < 100.00%"]
        for name, check in result["checks"].items():
            if samples is not None and name.startswith("real"):
                check["samples"], data["real_complete"] = samples, False
    return SimpleNamespace(to_dict=lambda: data)


def record_verdict(report: Any, model: Path) -> None:
    """Merge ``report``'s verdict on ``model`` into parity.json as verify does
    (vggexport.store.parity_record.write_parity)."""
    from vggexport.store.fileio import sha256_file
    from vggexport.store.parity_record import write_parity

    checkpoint = model.parent / "best.pt"
    write_parity(report, [(model, "onnx", model.name.endswith(".preprocessing.onnx"), sha256_file(model))],
                  checkpoint, sha256_file(checkpoint))
