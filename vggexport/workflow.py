"""What the export and verify commands do, as library calls (the CLI only parses options)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggexport import artifacts as paths
from vggexport.checkpoint import Checkpoint, load_checkpoint
from vggexport.errors import VggExportError
from vggexport.fileio import sha256_file
from vggexport.manifest import update_manifest
from vggexport.spec import ExportSpec
from vggexport.verify import Batches, ParityReport, array_batches, random_inputs, run_parity

if TYPE_CHECKING:
    from vggexport.quantize import CalibrationConfig


@dataclass(frozen=True)
class ModelSelection:
    """Which model a command works on: <artifacts>/<name>/, name from --cfg and --batch-norm."""

    cfg: str = "A"
    batch_norm: bool = True
    artifacts: str = str(paths.DEFAULT_ARTIFACTS)
    checkpoint: str | None = None

    @property
    def name(self) -> str:
        from vggexport.model import torchvision_name

        return torchvision_name(self.cfg, self.batch_norm)

    @property
    def model_dir(self) -> Path:
        return paths.model_dir(self.artifacts, self.name)

    def load_checkpoint(self) -> Checkpoint:
        return load_checkpoint(self.checkpoint or self.model_dir / paths.BEST)


def export_torchscript(selection: ModelSelection, out: str | None = None, ckpt: Checkpoint | None = None) -> Path:
    from vggexport.export import export_torchscript as export

    ckpt = ckpt or selection.load_checkpoint()
    return export(ckpt, out or paths.model_dir(selection.artifacts, ckpt.model_config.name) / paths.TORCHSCRIPT)


def export_onnx(selection: ModelSelection, spec: ExportSpec, out: str | None = None,
                with_preprocessing: bool = False, ckpt: Checkpoint | None = None, precision: str = "fp32",
                calibration: CalibrationConfig | None = None) -> list[Path]:
    """fp32 from the checkpoint; fp16/int8 from the fp32 model.onnx already exported from that checkpoint."""
    from vggexport.export import export_onnx as export

    ckpt = ckpt or selection.load_checkpoint()
    if precision != "fp32":
        if with_preprocessing:
            raise VggExportError("--with-preprocessing writes the fp32 uint8-input model: use it with --precision fp32")
        return [export_variant(selection, precision, out, calibration, ckpt)]
    folder = paths.model_dir(selection.artifacts, ckpt.model_config.name)
    written = [export(ckpt, out or folder / paths.ONNX, spec)]
    if with_preprocessing:
        target = Path(out).with_suffix(".preprocessing.onnx") if out else folder / paths.ONNX_PREPROCESSING
        written.append(export(ckpt, target, spec, preprocessing=True))
    return written


def export_variant(selection: ModelSelection, precision: str, out: str | None = None,
                   calibration: CalibrationConfig | None = None, ckpt: Checkpoint | None = None) -> Path:
    from vggexport.variants import make_variant

    ckpt = ckpt or selection.load_checkpoint()
    folder = paths.model_dir(selection.artifacts, ckpt.model_config.name)
    target = out or folder / paths.ONNX_BY_PRECISION[precision]
    return make_variant(folder / paths.ONNX, precision, target, calibration, checkpoint_sha256=ckpt.sha256())


def export_exported_program(selection: ModelSelection, out: str | None = None, ckpt: Checkpoint | None = None) -> Path:
    from vggexport.exported_program import export_exported_program as export

    ckpt = ckpt or selection.load_checkpoint()
    return export(ckpt, out or paths.model_dir(selection.artifacts, ckpt.model_config.name) / paths.EXPORTED_PROGRAM)


def export_all(selection: ModelSelection, spec: ExportSpec, with_preprocessing: bool = False,
               precisions: Sequence[str] = ("fp32",), calibration: CalibrationConfig | None = None) -> list[Path]:
    """Every export from one load (and one checksum check) of the checkpoint; fp32 ONNX always, variants on request."""
    unknown = sorted(set(precisions) - set(paths.ONNX_BY_PRECISION))
    if unknown:
        raise VggExportError(f"unknown precision {unknown[0]!r}: choose {', '.join(paths.ONNX_BY_PRECISION)}")
    ckpt = selection.load_checkpoint()
    written = [export_torchscript(selection, ckpt=ckpt), export_exported_program(selection, ckpt=ckpt),
               *export_onnx(selection, spec, None, with_preprocessing, ckpt)]
    for precision in dict.fromkeys(p for p in precisions if p != "fp32"):
        written.append(export_variant(selection, precision, None, calibration, ckpt))
    return written


def real_batches(ckpt: Checkpoint, data_dir: str | None, samples: int | None, batch_size: int = 500) -> Batches:
    """The dataset's test split, preprocessed exactly as in training, produced lazily per batch."""
    import torch

    from vggexport.data import load_dataset
    from vggexport.transforms import preprocess

    config = ckpt.model_config
    data = load_dataset(config.dataset, data_dir, image_size=config.image_size, channels=config.in_channels)
    images, labels = data.test_images[:samples], data.test_labels[:samples].numpy()

    def produce() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for start in range(0, len(images), batch_size):
            with torch.no_grad():
                x = preprocess(images[start : start + batch_size], image_size=config.image_size,
                               mean=config.mean, std=config.std)
            yield x.numpy(), labels[start : start + batch_size]
    return produce


def default_runtimes() -> list[str]:
    import torch

    runtimes = ["torchscript", "onnxruntime-cpu"]
    return runtimes + (["torchscript-cuda", "onnxruntime-cuda"] if torch.cuda.is_available() else [])


def verify(selection: ModelSelection, spec: ExportSpec, *, runtimes: Sequence[str] = (), data_dir: str | None = None,
           samples: int | None = None, random_only: bool = False, report: str | None = None,
           device: str = "cpu") -> ParityReport:
    """``device`` runs the PyTorch eager fp32 reference (TF32 off on CUDA)."""
    from vggexport.runners import TorchRunner, make_runner

    ckpt = selection.load_checkpoint()
    config = ckpt.model_config
    folder = paths.model_dir(selection.artifacts, config.name)
    shape = (config.in_channels, config.image_size, config.image_size)
    inputs = {k: array_batches(v, None, len(v)) for k, v in random_inputs(shape, spec.batch_sizes).items()}
    if not random_only:
        inputs["real"] = real_batches(ckpt, data_dir, samples)
    candidates = [make_runner(r, folder) for r in (runtimes or default_runtimes())]
    result = run_parity(TorchRunner(ckpt.build_model("cpu"), device=device), candidates, inputs, spec,
                        model=config.name)
    written = result.write(report or folder / paths.PARITY)
    runtimes = [r.runtime for r in result.runtimes]
    onnx_path = folder / paths.ONNX
    onnx_checked = onnx_path.is_file() and any(r.startswith("onnxruntime") for r in runtimes)
    # Which ONNX file was verified, so `vggexport triton` can refuse one re-exported since.
    onnx_sha256 = sha256_file(onnx_path) if onnx_checked else None
    update_manifest(written.parent, [written], parity={"passed": result.passed, "summary": result.summary(),
                                                       "runtimes": runtimes, "onnx_sha256": onnx_sha256})
    return result
