"""Triton's ModelConfig message, built from a few fields: one builder for ``vggexport triton``'s config.pbtxt and
for ``vggexport serve``'s model configuration extension, so the two cannot disagree. Torch- and onnx-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABELS_FILE = "labels.txt"  # the class names beside config.pbtxt, one per line

Tensor = tuple[str, str, list[int]]  # (name, KServe v2 datatype, dims with the batch dimension first)


@dataclass(frozen=True)
class ConfigFields:
    """What a ModelConfig says about one served ONNX, from its graph (``vggexport triton``) or from the
    running session (``vggexport serve``'s model configuration extension)."""

    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int
    kind: str  # "gpu" or "cpu"
    instances: int = 1
    batching: bool = True
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    label_filename: str | None = None
    warmup_batch_sizes: tuple[int, ...] = ()
    image_size: int = 0  # the side a warm-up image gets where the input's H and W are dynamic


def build_model_config(fields: ConfigFields) -> Any:
    """The ModelConfig message (tritonclient's generated schema); imports neither torch nor onnx."""
    from tritonclient.grpc import model_config_pb2 as pb

    def data_type(datatype: str) -> int:
        return pb.DataType.Value(f"TYPE_{datatype}")

    message = pb.ModelConfig(name=fields.name, platform="onnxruntime_onnx", max_batch_size=fields.max_batch_size)
    for name, datatype, dims in fields.inputs:
        message.input.add(name=name, data_type=data_type(datatype), dims=dims[1:])
    for name, datatype, dims in fields.outputs:
        message.output.add(name=name, data_type=data_type(datatype), dims=dims[1:],
                           label_filename=fields.label_filename or "")
    message.instance_group.add(count=fields.instances,
                               kind=pb.ModelInstanceGroup.Kind.Value(f"KIND_{fields.kind.upper()}"))
    if fields.batching:
        message.dynamic_batching.preferred_batch_size.extend(fields.preferred_batch_sizes)
        message.dynamic_batching.max_queue_delay_microseconds = fields.max_queue_delay_us
    (input_name, input_type, input_dims), *_ = fields.inputs
    warm_dims = [fields.image_size if d == -1 else d for d in input_dims[1:]]
    if all(d > 0 for d in warm_dims):
        for size in fields.warmup_batch_sizes:
            warmup = message.model_warmup.add(name="zeros" if size == 1 else f"zeros_batch_{size}", batch_size=size)
            warmup.inputs[input_name].CopyFrom(pb.ModelWarmup.Input(
                data_type=data_type(input_type), dims=warm_dims, zero_data=True))
    return message
