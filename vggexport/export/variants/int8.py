"""int8 ONNX by static quantization (onnxruntime.quantization: QDQ, per-channel weights).

The images that calibrate are ``vggexport.export.variants.calibration``'s; the regions kept fp32 are
``vggexport.export.variants.regions``'. This module imports onnxruntime.quantization: only make_variant loads it.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from vggexport.export.variants.calibration import CalibrationConfig, calibration_images
from vggexport.export.variants.regions import fp32_regions, pool_before_relu
from vggexport.model import ModelConfig

CALIBRATION_BATCH = 64
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}


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
