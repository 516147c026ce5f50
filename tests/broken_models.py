"""Deliberately broken copies of an exported model.onnx: each one verify must refuse."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

Breaker = Callable[[onnx.ModelProto], None]


def append_to_output(proto: onnx.ModelProto, op: str, constant: np.ndarray) -> None:
    """Route the graph's output through ``op(output, constant)``."""
    graph = proto.graph
    output = graph.output[0].name
    raw = f"{output}_before_{op.lower()}"
    for node in graph.node:
        node.output[:] = [raw if o == output else o for o in node.output]
    name = f"broken_{op.lower()}_constant"
    graph.initializer.append(numpy_helper.from_array(constant.astype(np.float32), name))
    graph.node.append(helper.make_node(op, [raw, name], [output]))


def all_nan(proto: onnx.ModelProto) -> None:
    append_to_output(proto, "Mul", np.array([np.nan], np.float32))


def inf_in_one_class(proto: onnx.ModelProto) -> None:
    classes = len(json.loads(metadata(proto)["class_names"]))
    bias = np.zeros(classes, np.float32)
    bias[3] = np.inf
    append_to_output(proto, "Add", bias)


def altered_weights(proto: onnx.ModelProto) -> None:
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(weight).copy() + np.float32(0.05)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))


def one_weight_changed(proto: onnx.ModelProto) -> None:
    """A single weight, the largest, scaled by 1.5: every other parameter is exact."""
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(weight).copy()
    flat = values.reshape(-1)
    flat[int(np.abs(flat).argmax())] *= np.float32(1.5)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))


def permuted_outputs(proto: onnx.ModelProto) -> None:
    """The logits of classes 0 and 1 swapped (as if the last layer's rows were permuted)."""
    classes = len(json.loads(metadata(proto)["class_names"]))
    order = np.arange(classes)
    order[[0, 1]] = order[[1, 0]]
    graph = proto.graph
    output = graph.output[0].name
    raw = f"{output}_unpermuted"
    for node in graph.node:
        node.output[:] = [raw if o == output else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(order.astype(np.int64), "broken_order"))
    graph.node.append(helper.make_node("Gather", [raw, "broken_order"], [output], axis=1))


def wrong_at_batch_two(proto: onnx.ModelProto) -> None:
    """Right at batch 1, 7 and 64; negated logits at batch 2 (which a server's batcher does form)."""
    graph = proto.graph
    output = graph.output[0].name
    raw = f"{output}_any_batch"
    for node in graph.node:
        node.output[:] = [raw if o == output else o for o in node.output]
    graph.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "b2_zero"),
                              numpy_helper.from_array(np.array(2, np.int64), "b2_two")])
    graph.node.extend([
        helper.make_node("Shape", [raw], ["b2_shape"]),
        helper.make_node("Gather", ["b2_shape", "b2_zero"], ["b2_batch"], axis=0),
        helper.make_node("Equal", ["b2_batch", "b2_two"], ["b2_is_two"]),
        helper.make_node("Neg", [raw], ["b2_negated"]),
        helper.make_node("Where", ["b2_is_two", "b2_negated", raw], [output]),
    ])


def scaled_logits_claiming_int8(proto: onnx.ModelProto) -> None:
    """Logits doubled (argmax and accuracy unchanged), dressed as an int8 variant with a dead Q/DQ pair."""
    append_to_output(proto, "Mul", np.array([2.0], np.float32))
    graph = proto.graph
    graph.initializer.extend([numpy_helper.from_array(np.ones(4, np.float32), "dead_x"),
                              numpy_helper.from_array(np.array(0.1, np.float32), "dead_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), "dead_zero")])
    graph.node.extend([helper.make_node("QuantizeLinear", ["dead_x", "dead_scale", "dead_zero"], ["dead_q"]),
                       helper.make_node("DequantizeLinear", ["dead_q", "dead_scale", "dead_zero"], ["dead_dq"])])
    proto.metadata_props.add(key="precision", value="int8")


def second_output_named_logits(proto: onnx.ModelProto) -> None:
    """The right tensor renamed to 'aux' and a negated copy exported as 'logits' second."""
    graph = proto.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["aux" if o == output else o for o in node.output]
    graph.output[0].name = "aux"
    graph.node.append(helper.make_node("Neg", ["aux"], [output]))
    graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))


def duplicate_mean(proto: onnx.ModelProto) -> None:
    """A second 'mean' entry: Python keeps the last, other readers may take the first."""
    value = metadata(proto)["mean"]
    proto.metadata_props.add(key="mean", value=shift_mean(value))
    proto.metadata_props.add(key="mean", value=value)


def set_metadata(key: str, change: Callable[[str], str]) -> Breaker:
    def breaker(proto: onnx.ModelProto) -> None:
        for prop in proto.metadata_props:
            if prop.key == key:
                prop.value = change(prop.value)
    return breaker


def swap_first_two(value: str) -> str:
    names = json.loads(value)
    names[0], names[1] = names[1], names[0]
    return json.dumps(names)


def shift_mean(value: str) -> str:
    return json.dumps([m + 0.1 for m in json.loads(value)])


BREAKERS: dict[str, Breaker] = {
    "all-nan": all_nan,
    "inf-in-one-class": inf_in_one_class,
    "altered-weights": altered_weights,
    "one-weight-changed": one_weight_changed,
    "permuted-outputs": permuted_outputs,
    "swapped-class-names": set_metadata("class_names", swap_first_two),
    "wrong-mean": set_metadata("mean", shift_mean),
    "wrong-image-size": set_metadata("image_size", lambda v: str(int(v) * 2)),
    "other-checkpoint": set_metadata("checkpoint_sha256", lambda v: "0" * 64),
    "image-size-as-float": set_metadata("image_size", lambda v: f"{int(v)}.0"),
    "wrong-at-batch-two": wrong_at_batch_two,
    "scaled-logits-claiming-int8": scaled_logits_claiming_int8,
    "second-output-named-logits": second_output_named_logits,
    "duplicate-mean": duplicate_mean,
}

# What each breaker's failure must say: the check that caught it, not merely "FAILED".
EXPECTED = {
    "all-nan": "non-finite values", "inf-in-one-class": "non-finite values", "altered-weights": "outside atol",
    "one-weight-changed": "outside atol", "permuted-outputs": "outside atol",
    "swapped-class-names": "'class_names' is", "wrong-mean": "'mean' is", "wrong-image-size": "'image_size' is",
    "other-checkpoint": "'checkpoint_sha256' is", "image-size-as-float": "'image_size' is",
    "wrong-at-batch-two": "[random-mixed]", "scaled-logits-claiming-int8": "conv/linear weights are not int8",
    "second-output-named-logits": "outputs are", "duplicate-mean": "appears 3 times",
}


def metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def broken_copy(source: Path, target: Path, breaker: Breaker) -> Path:
    proto = onnx.load(str(source))
    breaker(proto)
    onnx.save(proto, str(target))
    return target


def replace_hostile(path: Path, case: str) -> Path:
    """Put something that is not a model where the file ``path`` was: a directory, a symlink loop, an empty
    file, or its first half."""
    data = path.read_bytes()
    path.unlink()
    if case == "directory":
        path.mkdir()
    elif case == "symlink loop":
        path.symlink_to(path)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    return path
