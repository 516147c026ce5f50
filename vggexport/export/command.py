"""What the export commands do, as library calls (the CLI only parses options)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vggexport.store import paths
from vggexport.checkpoint import Checkpoint, load_checkpoint
from vggexport.errors import VggExportError
from vggexport.names import model_folder_name
from vggexport.export.spec import ExportSpec

if TYPE_CHECKING:
    from vggexport.export.variants.calibration import CalibrationConfig


@dataclass(frozen=True)
class ModelSelection:
    """Which model a command works on: <artifacts>/<name>/, name from --name, else from --cfg and --batch-norm."""

    cfg: str = "A"
    batch_norm: bool = True
    artifacts: str = str(paths.DEFAULT_ARTIFACTS)
    checkpoint: str | None = None
    model_name: str | None = None

    @property
    def name(self) -> str:
        return model_folder_name(self.model_name, self.cfg, self.batch_norm)

    @property
    def model_dir(self) -> Path:
        return paths.model_dir(self.artifacts, self.name)

    def load_checkpoint(self) -> Checkpoint:
        return load_checkpoint(self.checkpoint or self.model_dir / paths.BEST)


def export_torchscript(selection: ModelSelection, out: str | None = None, ckpt: Checkpoint | None = None) -> Path:
    from vggexport.export.torchscript import export_torchscript as export

    ckpt = ckpt or selection.load_checkpoint()
    return export(ckpt, out or paths.model_dir(selection.artifacts, ckpt.model_config.name) / paths.TORCHSCRIPT)


def export_onnx(selection: ModelSelection, spec: ExportSpec, out: str | None = None,
                with_preprocessing: bool = False, ckpt: Checkpoint | None = None, precision: str = "fp32",
                calibration: CalibrationConfig | None = None) -> list[Path]:
    """fp32 from the checkpoint; fp16/int8 from the fp32 model.onnx already exported from that checkpoint."""
    from vggexport.export.onnx import export_onnx as export

    ckpt = ckpt or selection.load_checkpoint()
    if precision != "fp32":  # the uint8-input graph is fp32 only: with_preprocessing concerns fp32 exports
        return [export_variant(selection, precision, out, calibration, ckpt)]
    folder = paths.model_dir(selection.artifacts, ckpt.model_config.name)
    written = [export(ckpt, out or folder / paths.ONNX, spec)]
    if with_preprocessing:
        target = Path(out).with_suffix(".preprocessing.onnx") if out else folder / paths.ONNX_PREPROCESSING
        written.append(export(ckpt, target, spec, preprocessing=True))
    return written


def export_variant(selection: ModelSelection, precision: str, out: str | None = None,
                   calibration: CalibrationConfig | None = None, ckpt: Checkpoint | None = None) -> Path:
    from vggexport.export.variants.make import make_variant

    ckpt = ckpt or selection.load_checkpoint()
    folder = paths.model_dir(selection.artifacts, ckpt.model_config.name)
    target = out or folder / paths.ONNX_BY_PRECISION[precision]
    return make_variant(folder / paths.ONNX, precision, target, calibration, checkpoint_sha256=ckpt.sha256())


def export_exported_program(selection: ModelSelection, out: str | None = None, ckpt: Checkpoint | None = None) -> Path:
    from vggexport.export.pt2 import export_exported_program as export

    ckpt = ckpt or selection.load_checkpoint()
    return export(ckpt, out or paths.model_dir(selection.artifacts, ckpt.model_config.name) / paths.EXPORTED_PROGRAM)


def export_all(selection: ModelSelection, spec: ExportSpec, with_preprocessing: bool = True,
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
