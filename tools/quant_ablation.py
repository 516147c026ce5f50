"""The evidence behind the int8 defaults: each quantization choice's accuracy, agreement, size and speed vs fp32.

    python tools/quant_ablation.py artifacts/vgg11_bn --data-dir ../shared/data [--rounds 3 --seconds 1]

Makes one int8 file per choice from <model_dir>/model.onnx (what stays fp32, activation type,
calibration method, and two deliberately bad calibrations), then on the full real test set prints
top-1 accuracy, the difference to fp32 in points, top-1 agreement with fp32, the size ratio, and the
ORT CPU throughput ratio to fp32 at batch 64 (the runners take turns for --rounds rounds; median and
min-max of the per-round ratios). Variants are written to a temporary folder, not beside the model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from vggexport.checkpoint import load_checkpoint
from vggexport.export.variants.calibration import CalibrationConfig
from vggexport.backend.onnxrt import OnnxRuntimeRunner
from vggexport.export.spec import ExportSpec
from vggexport.export.variants.make import make_variant
from vggexport.verify.inputs import dataset_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import measure

CHOICES: dict[str, dict[str, object]] = {
    "default (first block + tail fp32, s8, minmax)": {},
    "tail fp32 (first block int8)": {"keep_fp32": ("tail",)},
    "nothing kept fp32": {"keep_fp32": ()},
    "first block + tail + last layer fp32": {"keep_fp32": ("first_block", "tail", "last_layer")},
    "uint8 activations (U8S8)": {"activation_type": "uint8"},
    "per-tensor weights": {"per_channel": False},
    "entropy": {"method": "entropy"},
    "percentile": {"method": "percentile"},
    "BAD: constant images": {"images": "constant"},
    "BAD: noise images": {"images": "noise"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--samples", type=int, default=512, help="Calibration samples.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    fp32 = args.model_dir / "model.onnx"
    ckpt = load_checkpoint(args.model_dir / "best.pt")
    batches = [(b.inputs, b.labels)
               for b in dataset_batches(ckpt, args.data_dir, None, ExportSpec(), with_pixels=False)()]
    labels = np.concatenate([y for _, y in batches])
    speed_input = batches[0][0][:64]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": fp32, "fp16": make_variant(fp32, "fp16", Path(tmp) / "fp16.onnx")}
        for i, (name, options) in enumerate(CHOICES.items()):
            config = CalibrationConfig(data_dir=args.data_dir, samples=args.samples,
                                       **options)  # type: ignore[arg-type]
            files[name] = make_variant(fp32, "int8", Path(tmp) / f"{i}.int8.onnx", config)
        runners = {name: OnnxRuntimeRunner(path).activate() for name, path in files.items()}
        outputs = {name: np.concatenate([r.infer(x) for x, _ in batches]) for name, r in runners.items()}
        speed: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, runner in runners.items():
                speed[name].append(64 / statistics.median(measure(runner, speed_input, args.seconds)))
        reference = outputs["fp32"].argmax(1)
        fp32_accuracy = float((reference == labels).mean())
        print(f"{len(labels)} test images; fp32 accuracy {fp32_accuracy:.4f}; calibration {args.samples} samples")
        print(f"{'variant':<46}{'accuracy':>9}{'points':>8}{'agree':>8}{'size':>7}  b64 speed vs fp32 (min-max)")
        for name, out in outputs.items():
            accuracy = float((out.argmax(1) == labels).mean())
            ratios = [s / f for s, f in zip(speed[name], speed["fp32"])]
            print(f"{name:<46}{accuracy:>9.4f}{(accuracy - fp32_accuracy) * 100:>+8.2f}"
                  f"{float((out.argmax(1) == reference).mean()):>8.4f}"
                  f"{files[name].stat().st_size / fp32.stat().st_size:>7.1%}  "
                  f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
