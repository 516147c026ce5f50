"""Inference speed of every runner on the same model and inputs, as ratios to PyTorch eager fp32.

    python tools/bench_infer.py [--checkpoint artifacts/vgg11_bn/best.pt] [--seconds 2]
    python tools/bench_infer.py --variants [--provider cpu|cuda] [--data-dir ../shared/data] [--rounds 5]

Without --checkpoint it builds the default CPU model (cfg A, batch norm, width
0.25, 32x32, head 512) with random weights: speed does not depend on the weights.
Throughput at batch 1, 8 and 64 and latency (median) at batch 1 for PyTorch
eager fp32, eager bf16 autocast (CPU), TorchScript, torch.export (.pt2), ONNX Runtime CPU, and
ONNX Runtime CUDA and PyTorch CUDA when present.

--variants compares the precision variants (model.fp16.onnx, model.int8.onnx)
with model.onnx on one ONNX Runtime provider (int8 on CUDA too, where its QDQ
nodes run on the CUDA provider; the int8 file targets CPUs): throughput at batch 1 and 64 as
ratios to fp32 and file sizes as fractions of fp32's. The runners take turns
for --rounds rounds, so machine noise hits all of them alike; each ratio is
the median over rounds with its min-max beside it. int8 calibrates on the
training images of --data-dir when given, else on noise (speed does not
depend on the ranges). --image-size/--width/--flip-average override the
default model's (224 and 1.0 for the GPU target).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vggexport.checkpoint import load_checkpoint, save_checkpoint
from vggexport.export.onnx import export_onnx
from vggexport.export.torchscript import export_torchscript
from vggexport.export.pt2 import export_exported_program
from vggexport.model import ModelConfig, build_model
from vggexport.backend.base import Runner
from vggexport.backend.onnxrt import OnnxRuntimeRunner
from vggexport.backend.pytorch import ExportedProgramRunner, TorchRunner, TorchScriptRunner
from vggexport.export.spec import ExportSpec

BATCHES = (1, 8, 64)
VARIANT_BATCHES = (1, 64)


def measure(runner: Runner, batch: np.ndarray, seconds: float) -> list[float]:
    for _ in range(3):
        runner.infer(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        runner.infer(batch)
        times.append(time.perf_counter() - started)
    return times


def make_runners(ckpt_path: Path, folder: Path) -> list[Runner]:
    ckpt = load_checkpoint(ckpt_path)
    onnx_path = export_onnx(ckpt, folder / "model.onnx", ExportSpec())
    ts_path = export_torchscript(ckpt, folder / "model.torchscript.pt")
    pt2_path = export_exported_program(ckpt, folder / "model.pt2")
    runners: list[Runner] = [TorchRunner(ckpt_path), TorchRunner(ckpt_path, precision="bf16"),
                             TorchScriptRunner(ts_path), ExportedProgramRunner(pt2_path),
                             OnnxRuntimeRunner(onnx_path, provider="cpu")]
    runners[1].name = "pytorch-bf16"
    if torch.cuda.is_available():
        cuda = TorchRunner(ckpt_path, device="cuda")
        cuda.name = "pytorch-cuda"
        program = ExportedProgramRunner(pt2_path, device="cuda")
        program.name = "torch-export-cuda"
        runners += [cuda, program, OnnxRuntimeRunner(onnx_path, provider="cuda")]
    return runners


def default_checkpoint(folder: Path, args: argparse.Namespace) -> Path:
    overrides = {k: v for k, v in (("image_size", args.image_size), ("width", args.width),
                                   ("flip_average", args.flip_average)) if v is not None}
    config = ModelConfig(**{"width": 0.25, "class_names": tuple(str(i) for i in range(10)), **overrides})
    return save_checkpoint(folder / "best.pt", model_config=config, state={"model": build_model(config).state_dict()})


def bench_variants(ckpt_path: Path, folder: Path, args: argparse.Namespace) -> None:
    from vggexport.export.variants.calibration import CalibrationConfig
    from vggexport.export.variants.make import make_variant

    ckpt = load_checkpoint(ckpt_path)
    config = ckpt.model_config
    fp32 = export_onnx(ckpt, folder / "model.onnx", ExportSpec())
    images = "train" if args.data_dir else "noise"
    calibration = CalibrationConfig(data_dir=args.data_dir, images=images, samples=args.calibration_samples)
    files = {"fp32": fp32, "fp16": make_variant(fp32, "fp16", folder / "model.fp16.onnx"),
             "int8": make_variant(fp32, "int8", folder / "model.int8.onnx", calibration)}
    shape = (config.in_channels, config.image_size, config.image_size)
    inputs = {b: np.random.default_rng(0).standard_normal((b, *shape), dtype=np.float32) for b in VARIANT_BATCHES}
    runners = {name: OnnxRuntimeRunner(path, provider=args.provider) for name, path in files.items()}
    throughput: dict[str, dict[int, list[float]]] = {n: {b: [] for b in VARIANT_BATCHES} for n in runners}
    for runner in runners.values():
        runner.activate()
    print(f"model {config.name} width {config.width} at {config.image_size}x{config.image_size}, flip average "
          f"{config.flip_average}; provider {runners['fp32'].provider}; int8 calibrated on {images} images; "
          f"{args.rounds} rounds of {args.seconds}s per runner and batch")
    for _ in range(args.rounds):
        for name, runner in runners.items():
            for b in VARIANT_BATCHES:
                throughput[name][b].append(b / statistics.median(measure(runner, inputs[b], args.seconds)))
    print(f"{'variant':<8}{'size MB':>9}{'size/fp32':>11}" + "".join(
        f"{'b' + str(b) + ' img/s':>13}{'ratio (min-max)':>22}" for b in VARIANT_BATCHES))
    for name, path in files.items():
        cells = ""
        for b in VARIANT_BATCHES:
            ratios = [t / f for t, f in zip(throughput[name][b], throughput["fp32"][b])]
            cells += (f"{statistics.median(throughput[name][b]):>13.0f}"
                      f"{statistics.median(ratios):>9.2f}x ({min(ratios):.2f}-{max(ratios):.2f})".ljust(22))
        size = path.stat().st_size
        print(f"{name:<8}{size / 2**20:>9.2f}{size / fp32.stat().st_size:>10.1%} {cells}")
    if runners["int8"].provider != "CPUExecutionProvider":
        # ORT fuses QDQ into int8 kernels on the CPU; the CUDA provider runs the Q/DQ nodes beside float kernels.
        print("note: the int8 file targets CPUs (ORT's int8 kernels are the CPU provider's); on CUDA it is measured "
              "for comparison, not as a deployment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=2.0, help="Timing window per runner and batch size.")
    parser.add_argument("--variants", action="store_true", help="fp32 vs fp16 vs int8 ONNX on one provider.")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="With --variants.")
    parser.add_argument("--rounds", type=int, default=5, help="With --variants: alternating timing rounds.")
    parser.add_argument("--data-dir", default=None, help="With --variants: calibrate int8 on its training images.")
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=None, help="Without --checkpoint: the model's input size.")
    parser.add_argument("--width", type=float, default=None, help="Without --checkpoint: the channel multiplier.")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt_path = args.checkpoint or default_checkpoint(folder, args)
        if args.variants:
            bench_variants(ckpt_path, folder, args)
            return
        config = load_checkpoint(ckpt_path).model_config
        shape = (config.in_channels, config.image_size, config.image_size)
        inputs = {b: np.random.default_rng(0).standard_normal((b, *shape), dtype=np.float32) for b in BATCHES}
        print(f"model {config.name} width {config.width} at {config.image_size}x{config.image_size}, "
              f"{torch.get_num_threads()} CPU threads")
        rows = []
        for runner in make_runners(ckpt_path, folder):
            with runner:
                throughput = {b: b / statistics.median(measure(runner, inputs[b], args.seconds)) for b in BATCHES}
                latency = statistics.median(measure(runner, inputs[1], args.seconds)) * 1e3
            rows.append((runner.name, runner.provider, throughput, latency))
    base = rows[0][2]
    print(f"{'runner':<18}{'provider':<24}" + "".join(f"{'b' + str(b) + ' img/s':>14}{'ratio':>10}" for b in BATCHES)
          + f"{'b1 latency ms':>15}")
    for name, provider, throughput, latency in rows:
        cells = "".join(f"{throughput[b]:>14.0f}{throughput[b] / base[b]:>9.2f}x" for b in BATCHES)
        print(f"{name:<18}{provider:<24}{cells}{latency:>15.3f}")


if __name__ == "__main__":
    main()
