"""The graph regions a reduced-precision variant keeps in fp32, found by their place in a VGG's ONNX graph.

fp16 and int8 both keep these regions fp32; the functions read and rewrite an onnx GraphProto, imported by no one.
"""

from __future__ import annotations

from typing import Any

from vggexport.errors import VggExportError

# Graph regions that can stay fp32 (see fp32_regions): the first block (whatever precedes the first
# conv, such as the flip that builds the two views, then the conv, its ReLU and its MaxPool), the last
# linear layer, and the log-softmax/logsumexp tail of the flip average.
FP32_REGIONS = ("first_block", "last_layer", "tail")
# The first block stays fp32 for speed: its conv has one input channel and narrow outputs at full
# resolution, where ORT's int8 conv is requantization-bound and 4-5x slower than its fp32 NCHWc conv
# (BENCHMARKS.md, "Precision variants", measured on VGG-11); quantizing after the pool also quantizes 4x
# fewer values. In VGG-13/16/19 a second conv precedes the first pool, so there the block ends at the ReLU.
DEFAULT_FP32_REGIONS = ("first_block", "tail")


def fp32_regions(graph: Any, regions: tuple[str, ...]) -> list[str]:
    """Names of the nodes of ``regions`` in a VGG graph (a topologically sorted onnx GraphProto)."""
    nodes = list(graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    linears = [i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")]
    if not convs or not linears:
        raise VggExportError("the ONNX graph has no Conv or no Gemm/MatMul: not a vggexport VGG")
    chosen: set[int] = set()
    if "first_block" in regions:
        # Everything up to the first conv too: a conv whose input is dequantized and whose output is
        # quantized again would be quantized by ONNX Runtime itself at load time, fp32 weights or not.
        chosen.update(range(convs[0] + 1))
        chosen.update(nodes.index(n) for n in activation_chain(graph, nodes[convs[0]]))
    if "last_layer" in regions:
        chosen.add(linears[-1])
    if "tail" in regions:
        chosen.update(range(linears[-1] + 1, len(nodes)))
    return [nodes[i].name for i in sorted(chosen)]


def sole_consumer(graph: Any, node: Any) -> Any | None:
    """The one node reading ``node``'s only output, or None (several readers, none, or a graph output)."""
    if len(node.output) != 1 or node.output[0] in {o.name for o in graph.output}:
        return None
    readers = [n for n in graph.node if node.output[0] in n.input]
    return readers[0] if len(readers) == 1 else None


def activation_chain(graph: Any, conv: Any) -> list[Any]:
    """The Relu and MaxPool nodes that directly follow ``conv``, in graph order (at most one of each)."""
    chain: list[Any] = []
    node = sole_consumer(graph, conv)
    while node is not None and node.op_type in ("Relu", "MaxPool") and node.op_type not in {n.op_type for n in chain}:
        chain.append(node)
        node = sole_consumer(graph, node)
    return chain


def pool_before_relu(graph: Any) -> bool:
    """Rewrite the first Conv -> Relu -> MaxPool as Conv -> MaxPool -> Relu, in place; True if rewritten.

    Exact: ReLU is monotonic, so it commutes with a max. It decides where ONNX Runtime computes the first
    block's quantization: ORT's QDQ propagation moves a QuantizeLinear up across a MaxPool (not across a
    Relu), which turns the pool into a uint8 MaxPool in NCHW layout, about 10x slower than fp32's (measured).
    """
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if conv is None:
        return False  # fp32_regions then says why this graph is not a vggexport VGG
    relu = sole_consumer(graph, conv)
    pool = sole_consumer(graph, relu) if relu is not None and relu.op_type == "Relu" else None
    if pool is None or pool.op_type != "MaxPool" or len(pool.output) != 1:
        return False
    pooled, activated = pool.output[0], relu.output[0]
    pool.input[0], pool.output[0] = conv.output[0], f"{pooled}_before_relu"
    relu.input[0], relu.output[0] = pool.output[0], pooled
    moved = type(relu)()
    moved.CopyFrom(relu)
    graph.node.remove(relu)
    graph.node.insert(list(graph.node).index(pool) + 1, moved)
    kept = [v for v in graph.value_info if v.name != activated]  # that full-size tensor no longer exists
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return True
