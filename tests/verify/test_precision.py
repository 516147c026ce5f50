"""An fp32 computation cannot claim int8 or fp16 to be judged by the looser variant criteria."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.export.test_export import make_checkpoint
from vggexport.errors import VggExportError
from vggexport.export.onnx import export_onnx
from vggexport.verify.precision import precision_problems
from vggexport.export.spec import ExportSpec


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("precision") / "vgg11_bn"
    folder.mkdir()
    return export_onnx(make_checkpoint(folder, dataset="synthetic"), folder / "model.onnx", ExportSpec())


def wrapped_in_if(proto: onnx.ModelProto, scale: float = 1.0) -> onnx.ModelProto:
    """The same fp32 graph inside If(true), its logits times ``scale``, claiming int8."""
    graph, logits = proto.graph, proto.graph.output[0].name
    nodes = list(graph.node)
    nodes[-1].output[0] = "raw_logits"
    nodes.append(helper.make_node("Mul", ["raw_logits", "k"], [logits]))
    body = helper.make_graph(nodes, "then", [], [graph.output[0]],
                             [*graph.initializer, numpy_helper.from_array(np.array(scale, np.float32), "k")])
    outer = helper.make_graph([helper.make_node("If", ["cond"], [logits], then_branch=body, else_branch=body)],
                              "wrapped", [graph.input[0]], [graph.output[0]],
                              [numpy_helper.from_array(np.array(True), "cond")])
    wrapped = helper.make_model(outer, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    for prop in proto.metadata_props:
        wrapped.metadata_props.add(key=prop.key, value=prop.value)
    wrapped.metadata_props.add(key="precision", value="int8")
    return wrapped


def blocked_dequantize(proto: onnx.ModelProto) -> None:
    """Every weight spelled as DequantizeLinear(int8 ones, scale = the fp32 weight, block_size=1): exact fp32."""
    initializers = {t.name: t for t in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in initializers:
            name, weight = node.input[1], numpy_helper.to_array(initializers[node.input[1]])
            proto.graph.initializer.extend([numpy_helper.from_array(np.ones(weight.shape, np.int8), f"{name}_q"),
                                            numpy_helper.from_array(weight, f"{name}_s")])
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s"], [f"{name}_dq"],
                                          axis=0, block_size=1))
            node.input[1] = f"{name}_dq"
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def test_an_fp32_graph_inside_if_cannot_claim_int8(fp32: Path) -> None:
    problems = precision_problems(wrapped_in_if(onnx.load(str(fp32))), "int8")
    assert len(problems) == 1 and "If nodes" in problems[0]


def test_fp32_weights_behind_a_blocked_dequantize_cannot_claim_int8(fp32: Path) -> None:
    proto = onnx.load(str(fp32))
    blocked_dequantize(proto)
    problems = precision_problems(proto, "int8")
    assert len(problems) == 1 and "weights are not int8" in problems[0]


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_graph_without_weights_cannot_claim_a_reduced_precision(fp32: Path, precision: str) -> None:
    proto = onnx.load(str(fp32))
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            node.op_type = "Add"  # whatever it computes, nothing is left to judge
    assert "no Conv/Gemm/MatMul weights" in precision_problems(proto, precision)[0]


def test_fp16_keeps_no_fp32_layer(fp32: Path) -> None:
    # Only int8 may leave its first conv and last layer in fp32; an "fp16" file with an fp32 first conv may not.
    proto = onnx.load(str(fp32))
    for t in proto.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    assert precision_problems(proto, "fp16") == []
    first = next(n for n in proto.graph.node if n.op_type == "Conv").input[1]
    weight = next(t for t in proto.graph.initializer if t.name == first)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).astype(np.float32), first))
    assert "1 of" in precision_problems(proto, "fp16")[0]


def test_a_weightless_conv_is_a_one_line_problem(fp32: Path) -> None:
    proto = onnx.load(str(fp32))
    del next(n for n in proto.graph.node if n.op_type == "Conv").input[1:]
    proto.metadata_props.add(key="precision", value="int8")
    assert precision_problems(proto, "int8") == ["[file] a Conv/Gemm/MatMul node has no weight input"]


def test_a_broken_fp32_file_claiming_int8_neither_verifies_nor_ships(fp32: Path) -> None:
    from vggexport.store.parity_record import require_verified
    from vggexport.verify.command import VerifyOptions, verify

    folder = fp32.parent
    broken = folder / "model.int8.onnx"
    onnx.save(wrapped_in_if(onnx.load(str(fp32)), scale=1.04), str(broken))
    report = verify(folder / "best.pt", folder, ExportSpec(), VerifyOptions(models=(str(broken),)))
    assert not report.passed
    with pytest.raises(VggExportError, match="failed verification"):
        require_verified(broken)
