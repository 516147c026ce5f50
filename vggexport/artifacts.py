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
PARITY = "parity.json"


def model_dir(artifacts: str | Path, name: str) -> Path:
    return Path(artifacts) / name
