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
}


def metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def broken_copy(source: Path, target: Path, breaker: Breaker) -> Path:
    proto = onnx.load(str(source))
    breaker(proto)
    onnx.save(proto, str(target))
    return target
