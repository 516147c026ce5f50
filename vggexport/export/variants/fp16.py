"""fp16 ONNX: weights and compute in half precision, input and output still float32.

onnxconverter-common's float16 converter does the conversion; ``keep_io_types``
puts a Cast at each end, so clients send and receive float32 exactly as with the
fp32 file. The flip-average tail (log_softmax, logsumexp) stays fp32: it is a
reduction over exponentials, where fp16's 10-bit mantissa loses most.
"""

from __future__ import annotations

import json
import warnings
from importlib import metadata as importlib_metadata
from typing import Any

from vggexport.export.variants.regions import fp32_regions

# Besides the converter's own block list (ops without fp16 kernels in ONNX Runtime).
FP32_OPS = ("LogSoftmax", "ReduceLogSumExp", "Softmax")
FP32_REGIONS = ("tail",)


def convert_fp16(proto: Any) -> tuple[Any, dict[str, Any]]:
    """(fp16 ModelProto, conversion record for the metadata) from an fp32 ModelProto."""
    from onnxconverter_common import float16

    kept_nodes = fp32_regions(proto.graph, FP32_REGIONS)
    blocked_ops = sorted({*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OPS})
    with warnings.catch_warnings():
        # One warning per weight below fp16's range (clipped to +-1e-7): expected, and thousands of them.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=blocked_ops,
                                                     node_block_list=kept_nodes)
    float32_outputs(converted)
    record = {"converter": "onnxconverter-common float16.convert_float_to_float16",
              "converter_version": importlib_metadata.version("onnxconverter-common"), "keep_io_types": True,
              "fp32_ops": list(FP32_OPS), "fp32_nodes": kept_nodes, "keep_fp32": list(FP32_REGIONS)}
    return converted, json.loads(json.dumps(record))


def float32_outputs(proto: Any) -> None:
    """Undo the converter's fp16 Cast after a kept-fp32 node that produces a graph output.

    With the tail blocked, convert_float_to_float16 (1.16) casts the float32 logits to fp16 and
    declares the output fp16 despite keep_io_types; clients would get float16 logits.
    """
    import onnx

    producers = {output: node for node in proto.graph.node for output in node.output}
    for graph_output in proto.graph.output:
        tensor_type = graph_output.type.tensor_type
        cast = producers.get(graph_output.name)
        if tensor_type.elem_type != onnx.TensorProto.FLOAT16 or cast is None or cast.op_type != "Cast":
            continue
        source = producers.get(cast.input[0])
        if source is None:
            continue
        source.output[list(source.output).index(cast.input[0])] = graph_output.name
        proto.graph.node.remove(cast)
        tensor_type.elem_type = onnx.TensorProto.FLOAT
