"""int8 ONNX by static quantization (onnxruntime.quantization: QDQ, per-channel weights).

Calibration uses training images, chosen by a seeded permutation and preprocessed
exactly as at inference (vggexport.transforms.preprocess), so the activation
ranges are those the deployed model sees. ``CalibrationConfig.images`` can ask
for constant or noise images instead: a deliberately bad calibration, which
verify must refuse.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from vggexport.errors import VggExportError
from vggexport.model import ModelConfig

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_IMAGES = ("train", "constant", "noise")
# Graph regions that can stay fp32 (see fp32_regions): the first block (whatever precedes the first
# conv, such as the flip that builds the two views, then the conv, its ReLU and its MaxPool), the last
# linear layer, and the log-softmax/logsumexp tail of the flip average.
FP32_REGIONS = ("first_block", "last_layer", "tail")
# The first block stays fp32 for speed: its conv has one input channel and narrow outputs at full
# resolution, where ORT's int8 conv is requantization-bound and 4-5x slower than its fp32 NCHWc conv
# (BENCHMARKS.md, "Precision variants", measured on VGG-11); quantizing after the pool also quantizes 4x
# fewer values. In VGG-13/16/19 a second conv precedes the first pool, so there the block ends at the ReLU.
DEFAULT_FP32_REGIONS = ("first_block", "tail")
CALIBRATION_BATCH = 64
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}


@dataclass(frozen=True)
class CalibrationConfig:
    method: str = "minmax"
    samples: int = 512
    seed: int = 0
    data_dir: str | None = None
    images: str = "train"
    keep_fp32: tuple[str, ...] = DEFAULT_FP32_REGIONS
    per_channel: bool = True
    # int8 activations (S8S8): as fast as uint8 on VNNI/AMX here (BENCHMARKS.md, "Precision variants"),
    # and free of U8S8's saturation on AVX2 CPUs without VNNI, where the file may be served too.
    activation_type: str = "int8"
    extra_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method = self.method.lower()
        if method not in CALIBRATION_METHODS:
            raise VggExportError(f"unknown calibration method {self.method!r}: choose {', '.join(CALIBRATION_METHODS)}")
        object.__setattr__(self, "method", method)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise VggExportError(f"calibration samples must be a whole number >= 1, not {self.samples!r}")
        if self.images not in CALIBRATION_IMAGES:
            raise VggExportError(f"unknown calibration images {self.images!r}: choose {', '.join(CALIBRATION_IMAGES)}")
        unknown = set(self.keep_fp32) - set(FP32_REGIONS)
        if unknown:
            raise VggExportError(f"unknown fp32 regions {sorted(unknown)}: choose from {', '.join(FP32_REGIONS)}")
        if self.activation_type not in ("uint8", "int8"):
            raise VggExportError(f"activation type must be uint8 or int8, not {self.activation_type!r}")


def calibration_images(config: ModelConfig, calibration: CalibrationConfig) -> np.ndarray:
    """float32 (N, C, S, S), normalized as at inference; N = calibration.samples."""
    import torch

    from vggexport.transforms import preprocess

    generator = torch.Generator().manual_seed(calibration.seed)
    if calibration.images == "train":
        from vggexport.data.dataset import announce
        from vggexport.data.load import load_dataset

        data = load_dataset(config.dataset, calibration.data_dir, image_size=config.image_size,
                            channels=config.in_channels)
        count = len(data.train_images)
        if calibration.samples > count:
            raise VggExportError(f"{calibration.samples} calibration samples asked for; the training set has {count}")
        announce(data, "train split")
        pixels = data.train_images[torch.randperm(count, generator=generator)[: calibration.samples]]
    else:
        shape = (calibration.samples, config.in_channels, config.image_size, config.image_size)
        if calibration.images == "constant":
            pixels = torch.zeros(shape, dtype=torch.uint8)
        else:
            pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        x = preprocess(pixels, image_size=config.image_size, mean=config.mean, std=config.std)
    return x.numpy()


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


class ArrayReader(CalibrationDataReader):
    """Calibration batches from an in-memory array."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> None:
        self.input_name, self.images, self.batch_size = input_name, images, batch_size
        self.batches: Iterator[np.ndarray] = self.restart()

    def restart(self) -> Iterator[np.ndarray]:
        return (self.images[i : i + self.batch_size] for i in range(0, len(self.images), self.batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self.batches = self.restart()


def tensor_ranges(prepared: Path, reader: ArrayReader, method: Any, cache: Path) -> None:
    """Calibrate ``prepared`` and save its activation ranges to ``cache`` (ORT's calibration-cache JSON).

    quantize_static would calibrate too, but it builds the entropy calibrator with 128 histogram
    bins for 128 quantized bins, where the only candidate threshold is the full range: Entropy
    then equals MinMax (measured). TensorRT's 2048 bins give KL divergence thresholds to choose from.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = ENTROPY_BINS if method == CalibrationMethod.Entropy else {}
    calibrator = create_calibrator(prepared, None, augmented_model_path=str(cache.with_suffix(".augmented.onnx")),
                                   calibrate_method=method, extra_options=options)
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)


def quantize_int8(fp32: Any, config: ModelConfig, calibration: CalibrationConfig) -> tuple[Any, dict[str, Any]]:
    """(int8 ModelProto, calibration record for the metadata) from the fp32 ModelProto (left unchanged)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = calibration_images(config, calibration)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration.method]
    activation = QuantType.QUInt8 if calibration.activation_type == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="vggexport-int8-") as tmp:
        prepared, quantized, ranges = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        source = onnx.ModelProto()
        source.CopyFrom(fp32)
        commuted = "first_block" in calibration.keep_fp32 and pool_before_relu(source.graph)
        onnx.save_model(source, str(Path(tmp) / "source.onnx"))
        # ORT's symbolic shape inference fails on the exporter's value_info (a rank-less output); ONNX's suffices.
        quant_pre_process(str(Path(tmp) / "source.onnx"), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load_model(str(prepared)).graph
        excluded = fp32_regions(graph, calibration.keep_fp32)
        tensor_ranges(prepared, ArrayReader(graph.input[0].name, images), method, ranges)
        quantize_static(str(prepared), str(quantized), None, quant_format=QuantFormat.QDQ,
                        per_channel=calibration.per_channel, activation_type=activation,
                        weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=excluded,
                        extra_options=dict(calibration.extra_options), calibration_cache_path=str(ranges))
        proto = onnx.load_model(str(quantized))
    # Which data calibrated is recorded; where it lay on this machine (data_dir) is not.
    record = {key: value for key, value in asdict(calibration).items() if key != "data_dir"}
    record.update(format="QDQ", weight_type="int8", dataset=config.dataset, excluded_nodes=excluded,
                  keep_fp32=list(calibration.keep_fp32),
                  rewrites=["first MaxPool moved before its ReLU (they commute exactly)"] if commuted else [])
    if calibration.method == "entropy":
        record.update(ENTROPY_BINS)
    return proto, json.loads(json.dumps(record))
