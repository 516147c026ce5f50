"""Triton's model configuration extension: the ModelConfig of what this server is serving.

The message comes from ``vggexport.serve.config_message.build_model_config``, the builder behind the config.pbtxt
that ``vggexport triton`` writes, fed from the running session instead of the ONNX graph. gRPC sends
the message itself; HTTP sends its JSON form (protobuf's json_format, field names as in the .proto,
64-bit integers as JSON numbers as Triton prints them), so the two transports cannot disagree.
"""

from __future__ import annotations

from typing import Any

from vggexport.serve.service import OUTPUTS, ModelService
from vggexport.serve.config_message import LABELS_FILE, ConfigFields, build_model_config


def served_model_config(model: ModelService) -> Any:
    """The ModelConfig message of ``model`` as this process serves it."""
    runner, config = model.engine.runner, model.config
    classes = runner.output_shapes[0]  # the graph's first output is the logits
    # Both served outputs go out as FP32 whatever the graph computes in (see ModelService.infer).
    outputs = [(name, "FP32", classes) for name in OUTPUTS]
    return build_model_config(ConfigFields(
        name=model.name, inputs=[(model.input_name, model.input_datatype, model.input_shape)], outputs=outputs,
        max_batch_size=config.max_batch_size, kind="gpu" if runner.on_cuda else "cpu",
        instances=config.workers * config.instances,  # the batches that can run at once, all processes together
        batching=config.max_batch_size > 1, max_queue_delay_us=round(config.max_queue_delay_ms * 1000),
        label_filename=LABELS_FILE if model.labelled else None,
        warmup_batch_sizes=model.engine.warmup_batch_sizes, image_size=model.engine.image_size))


def config_json(message: Any) -> dict[str, Any]:
    """The JSON body of ``GET /v2/models/<name>/config``: the message as Triton's HTTP endpoint prints it."""
    from google.protobuf import json_format

    return int64_as_numbers(message, json_format.MessageToDict(message, preserving_proto_field_name=True))


def int64_as_numbers(message: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Protobuf's JSON mapping writes 64-bit integers (dims, queue delays) as strings; Triton writes numbers."""
    for field, value in message.ListFields():
        key = field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            data[key] = {str(k): json_value(value_field, item, data[key][str(k)]) for k, item in value.items()}
        elif is_repeated(field):
            data[key] = [json_value(field, item, entry) for item, entry in zip(value, data[key])]
        else:
            data[key] = json_value(field, value, data[key])
    return data


def json_value(field: Any, value: Any, entry: Any) -> Any:
    from google.protobuf.descriptor import FieldDescriptor

    if field.message_type is not None:
        return int64_as_numbers(value, entry)
    if field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
        return int(entry)
    return entry


def is_repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.29; older ones only have ``label``
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED
