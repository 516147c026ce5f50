"""int8's first block: kept fp32 in the file, run fp32 by ONNX Runtime, and rewritten exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.export.test_variants import run_onnx
from vggexport.store.onnx_file import read_onnx_metadata
from vggexport.export.variants.regions import fp32_regions, pool_before_relu


def first_conv(graph: onnx.GraphProto) -> onnx.NodeProto:
    return next(n for n in graph.node if n.op_type == "Conv")


def test_int8_keeps_its_first_block_fp32(int8: Path) -> None:
    proto = onnx.load(str(int8))
    graph, initializers = proto.graph, {t.name: t for t in proto.graph.initializer}
    conv = first_conv(graph)
    assert initializers[conv.input[1]].data_type == TensorProto.FLOAT, "the first conv's weight is not fp32"
    producers = {o: n for n in graph.node for o in n.output}
    assert conv.input[0] not in producers or producers[conv.input[0]].op_type != "DequantizeLinear"
    # The pool now comes before the ReLU, and the first quantization is after both.
    pool = next(n for n in graph.node if conv.output[0] in n.input)
    relu = next(n for n in graph.node if pool.output[0] in n.input)
    quantize = next(n for n in graph.node if relu.output[0] in n.input)
    assert (pool.op_type, relu.op_type, quantize.op_type) == ("MaxPool", "Relu", "QuantizeLinear")
    calibration = json.loads(read_onnx_metadata(int8)["calibration"])
    assert {conv.name, pool.name, relu.name} <= set(calibration["excluded_nodes"])
    assert calibration["keep_fp32"] == ["first_block", "tail"] and calibration["rewrites"]
    others = [n for n in graph.node if n.op_type == "Conv" and n is not conv]
    assert others and all(producers[n.input[1]].op_type == "DequantizeLinear" for n in others)


def test_onnx_runtime_does_not_quantize_the_first_conv_again(int8: Path, tmp_path: Path) -> None:
    # ORT quantizes a float-weight Conv itself when a DequantizeLinear feeds it and a QuantizeLinear
    # follows: excluding the conv alone would leave an int8 conv at run time, whatever the file says.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    ran = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(int8)).graph.node)
    assert ran.count("QLinearConv") == convs - 1 and "Conv" in ran


def test_pool_before_relu_computes_the_same(artifacts: Path, tmp_path: Path) -> None:
    fp32 = artifacts / "vgg11_bn" / "model.onnx"
    proto = onnx.load(str(fp32))
    assert pool_before_relu(proto.graph)
    onnx.checker.check_model(proto)
    produced = {o for n in proto.graph.node for o in n.output} | {t.name for t in proto.graph.initializer}
    assert {v.name for v in proto.graph.value_info} <= produced, "shape info left for a tensor that is gone"
    onnx.save(proto, str(tmp_path / "commuted.onnx"))
    x = np.random.default_rng(0).standard_normal((5, *[int(d.dim_value) for d in
                                                      proto.graph.input[0].type.tensor_type.shape.dim[1:]]))
    x = x.astype(np.float32) * 3
    np.testing.assert_array_equal(run_onnx(tmp_path / "commuted.onnx", x), run_onnx(fp32, x))


def graph_of(*ops: str) -> onnx.GraphProto:
    """x -> Conv -> ops... -> y, each op reading the one before."""
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["t0"], name="conv", pads=[1, 1, 1, 1])]
    for i, op in enumerate(ops):
        extra = {"kernel_shape": [2, 2], "strides": [2, 2]} if op == "MaxPool" else {}
        extra.update({"pads": [1, 1, 1, 1]} if op == "Conv" else {})
        inputs = [f"t{i}", "w2"] if op == "Conv" else [f"t{i}"]
        nodes.append(helper.make_node(op, inputs, [f"t{i + 1}"], name=f"{op.lower()}{i}", **extra))
    inits = [weight, numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w2")]
    nodes[-1].output[0] = "y"
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


@pytest.mark.parametrize("ops", [("Relu", "Conv", "Relu", "MaxPool"), ("MaxPool",), ("Relu",)])
def test_pool_before_relu_leaves_other_blocks_alone(ops: tuple[str, ...]) -> None:
    # VGG-13/16/19 put a second conv before the first pool: nothing to commute there.
    graph = graph_of(*ops)
    before = [n.op_type for n in graph.node]
    assert not pool_before_relu(graph)
    assert [n.op_type for n in graph.node] == before


def test_first_block_without_a_pool_is_the_conv_and_its_relu() -> None:
    graph = graph_of("Relu", "Conv", "Relu", "MaxPool", "Flatten", "Gemm")
    graph.node[-1].input[:] = ["t5", "w3"]
    names = fp32_regions(graph, ("first_block",))
    assert names == ["conv", "relu0"]


def test_verify_exempts_only_the_first_conv_and_last_layer_from_int8(int8: Path) -> None:
    from vggexport.verify.precision import precision_problems

    proto = onnx.load(str(int8))
    assert precision_problems(proto, "int8") == []
    # The second conv's weight swapped back to fp32: an int8 claim no longer holds.
    producers = {o: n for n in proto.graph.node for o in n.output}
    second = [n for n in proto.graph.node if n.op_type == "Conv"][1]
    assert producers[second.input[1]].op_type == "DequantizeLinear"
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "second_conv_fp32_weight")
    proto.graph.initializer.append(weight)
    second.input[1] = weight.name
    problems = precision_problems(proto, "int8")
    assert len(problems) == 1 and "weights are not int8" in problems[0]


def test_pool_before_relu_leaves_a_graph_without_conv_alone() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert not pool_before_relu(graph)
