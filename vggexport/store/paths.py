"""Where each artifact lives: ``<artifacts>/<name>/<file>``, name as torchvision's."""

from __future__ import annotations

from pathlib import Path

DEFAULT_ARTIFACTS = Path("artifacts")
BEST = "best.pt"
LAST = "last.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
TORCHSCRIPT = "model.torchscript.pt"
ONNX = "model.onnx"
ONNX_PREPROCESSING = "model.preprocessing.onnx"
ONNX_FP16 = "model.fp16.onnx"
ONNX_INT8 = "model.int8.onnx"
EXPORTED_PROGRAM = "model.pt2"
PARITY = "parity.json"
REPORT = "report.html"
ONNX_BY_PRECISION = {"fp32": ONNX, "fp16": ONNX_FP16, "int8": ONNX_INT8}


def model_dir(artifacts: str | Path, name: str) -> Path:
    return Path(artifacts) / name
