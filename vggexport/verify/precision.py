"""Is a file's claimed precision its computation's? Judged from the graph, never from the metadata.

A variant is held to accuracy criteria (spec.AccuracyCriterion) instead of elementwise tolerances, so an
fp32 file must not be able to claim "int8" or "fp16" to be judged loosely. This module fails closed for
reduced-precision claims: every conv/linear weight must really be stored in that precision, except where
vggexport itself keeps fp32 (int8's first conv and, on request, its last layer: see vggexport.export.variants.int8),
and a graph whose structure hides weights from this reading (control flow, local functions) is refused.
"""

from __future__ import annotations

from typing import Any

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
PASS_THROUGH = ("Transpose", "Identity")  # layout only: the stored type is what computes
SUBGRAPH_OPS = ("If", "Loop", "Scan")


def precision_problems(proto: Any, precision: str) -> list[str]:
    """One-line problems when ``proto`` (an onnx ModelProto) does not compute in ``precision``."""
    graph = proto.graph
    if precision == "fp32":
        return []  # fp32 is held to the strictest criteria: nothing to gain by a false claim
    if precision not in ("int8", "fp16"):
        return []  # check_file_metadata refuses unknown precisions
    hidden = [n.op_type for n in graph.node if n.op_type in SUBGRAPH_OPS]
    if hidden or len(proto.functions):
        what = f"{hidden[0]} nodes" if hidden else "model-local functions"
        return [f"[file] 'precision' is {precision!r} but the graph has {what}: vggexport variants have none"]
    nodes = [n for n in graph.node if n.op_type in WEIGHTED_OPS]
    if any(len(n.input) < 2 for n in nodes):
        return ["[file] a Conv/Gemm/MatMul node has no weight input"]
    if not nodes:
        return [f"[file] 'precision' is {precision!r} but the graph has no Conv/Gemm/MatMul weights"]
    weights = [n.input[1] for n in nodes]
    # int8 may keep the first conv fp32 (its default) and the last layer (CalibrationConfig.keep_fp32).
    judged = weights[1:-1] if precision == "int8" and len(weights) > 2 else weights
    stored = StoredTypes(graph)
    wrong = [w for w in judged if not (stored.is_int8(w) if precision == "int8" else stored.is_fp16(w))]
    if wrong:
        return [(f"[file] 'precision' is {precision!r} but {len(wrong)} of {len(judged)} conv/linear weights "
                 f"are not {precision} (first: {wrong[0]!r})")]
    return []


class StoredTypes:
    """How each weight tensor of a graph is stored, following layout-only nodes back to an initializer."""

    def __init__(self, graph: Any) -> None:
        self.producers = {o: node for node in graph.node for o in node.output}
        self.initializers = {t.name: t for t in graph.initializer}

    def source(self, name: str) -> tuple[Any | None, Any | None]:
        """(the node that finally produces ``name`` past layout-only nodes, or the initializer itself)."""
        node = self.producers.get(name)
        while node is not None and node.op_type in PASS_THROUGH:
            name = node.input[0]
            node = self.producers.get(name)
        return node, self.initializers.get(name)

    def is_fp16(self, name: str) -> bool:
        import onnx

        _, initializer = self.source(name)
        return initializer is not None and initializer.data_type == onnx.TensorProto.FLOAT16

    def is_int8(self, name: str) -> bool:
        """An int8/uint8 initializer dequantized per tensor or per channel (a blocked scale can carry fp32)."""
        import onnx

        node, _ = self.source(name)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
            return False
        if any(a.name == "block_size" and a.i > 0 for a in node.attribute):
            return False
        values, scale = self.initializers.get(node.input[0]), self.initializers.get(node.input[1])
        return (values is not None and values.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                and scale is not None and len(scale.dims) <= 1)
