"""Inference speed of every runner on the same model and inputs, as ratios to PyTorch eager fp32.

    python tools/bench_infer.py [--checkpoint artifacts/vgg11_bn/best.pt] [--seconds 2]

Without --checkpoint it builds the default CPU model (cfg A, batch norm, width
0.25, 32x32, head 512) with random weights: speed does not depend on the weights.
Throughput at batch 1, 8 and 64 and latency (median) at batch 1 for PyTorch
eager fp32, eager bf16 autocast (CPU), TorchScript, ONNX Runtime CPU, and
ONNX Runtime CUDA and PyTorch CUDA when present.
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
from vggexport.export import export_onnx, export_torchscript
from vggexport.model import ModelConfig, build_model
from vggexport.runners import OnnxRuntimeRunner, Runner, TorchRunner, TorchScriptRunner
from vggexport.spec import ExportSpec

BATCHES = (1, 8, 64)


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
    runners: list[Runner] = [TorchRunner(ckpt_path), TorchRunner(ckpt_path, precision="bf16"),
                             TorchScriptRunner(ts_path), OnnxRuntimeRunner(onnx_path, provider="cpu")]
    runners[1].name = "pytorch-bf16"
    if torch.cuda.is_available():
        cuda = TorchRunner(ckpt_path, device="cuda")
        cuda.name = "pytorch-cuda"
        runners += [cuda, OnnxRuntimeRunner(onnx_path, provider="cuda")]
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=2.0, help="Timing window per runner and batch size.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt_path = args.checkpoint
        if ckpt_path is None:
            config = ModelConfig(width=0.25, class_names=tuple(str(i) for i in range(10)))
            ckpt_path = save_checkpoint(folder / "best.pt", model_config=config,
                                        state={"model": build_model(config).state_dict()})
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
