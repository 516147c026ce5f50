"""A Triton Inference Server model repository from a verified ONNX export.

Layout: ``<repository>/<name>/config.pbtxt``, ``<repository>/<name>/1/model.onnx``
and ``labels.txt``. The batch dimension is left out of ``dims`` (Triton adds it
when max_batch_size > 0 and refuses a model whose first dimension is not
dynamic: triton-inference-server/server#7003).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from vggexport import artifacts as paths
from vggexport.errors import VggExportError
from vggexport.fileio import write_atomic, write_text_atomic

KINDS = ("gpu", "cpu")


@dataclass(frozen=True)
class TritonConfig:
    max_batch_size: int = 64
    instances: int = 1
    kind: str = "gpu"
    max_queue_delay_us: int = 100

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VggExportError(f"unknown instance kind {self.kind!r}: use gpu or cpu")
        if self.max_batch_size < 1 or self.instances < 1:
            raise VggExportError("--max-batch-size and --instances must be >= 1")


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [s for s in (4, 8, 16, 32, 64, 128, 256) if s <= max_batch_size]
    return (sizes[-3:] if sizes else []) or [max_batch_size]


def config_pbtxt(name: str, meta: dict[str, str], config: TritonConfig) -> str:
    side, channels = int(meta["image_size"]), int(meta["in_channels"])
    classes = len(json.loads(meta["class_names"]))
    preferred = ", ".join(map(str, preferred_batch_sizes(config.max_batch_size)))
    return f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {config.max_batch_size}
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    dims: [ {channels}, {side}, {side} ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {config.max_queue_delay_us}
}}
instance_group [
  {{
    count: {config.instances}
    kind: KIND_{config.kind.upper()}
  }}
]
'''


def check_verified(onnx_path: Path, *, allow_unverified: bool = False) -> None:
    """Only a file that parity.json records as passed, with this very sha256, goes into a repository."""
    from vggexport.record import require_verified

    require_verified(onnx_path, allow_unverified=allow_unverified)


def write_repository(model_dir: Path, repository: Path, config: TritonConfig, *, allow_unverified: bool = False) -> Path:
    from vggexport.export import read_onnx_metadata

    onnx_path = model_dir / paths.ONNX
    meta = read_onnx_metadata(onnx_path)
    check_verified(onnx_path, allow_unverified=allow_unverified)
    name = meta["model_name"]
    target = repository / name
    write_atomic(target / "1" / "model.onnx", lambda tmp: shutil.copyfile(onnx_path, tmp))
    write_text_atomic(target / "labels.txt", "".join(f"{label}\n" for label in json.loads(meta["class_names"])))
    write_text_atomic(target / "config.pbtxt", config_pbtxt(name, meta, config))
    return target
