"""What the export commands do, as library calls (the CLI only parses options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggexport import artifacts as paths
from vggexport.checkpoint import Checkpoint, load_checkpoint
from vggexport.spec import ExportSpec


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
        from vggexport.model import torchvision_name

        return self.model_name or torchvision_name(self.cfg, self.batch_norm)

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
                with_preprocessing: bool = False, ckpt: Checkpoint | None = None) -> list[Path]:
    from vggexport.export import export_onnx as export

    ckpt = ckpt or selection.load_checkpoint()
    folder = paths.model_dir(selection.artifacts, ckpt.model_config.name)
    written = [export(ckpt, out or folder / paths.ONNX, spec)]
    if with_preprocessing:
        target = Path(out).with_suffix(".preprocessing.onnx") if out else folder / paths.ONNX_PREPROCESSING
        written.append(export(ckpt, target, spec, preprocessing=True))
    return written


def export_all(selection: ModelSelection, spec: ExportSpec, with_preprocessing: bool = True) -> list[Path]:
    """Both exports from one load (and one checksum check) of the checkpoint."""
    ckpt = selection.load_checkpoint()
    return [export_torchscript(selection, ckpt=ckpt), *export_onnx(selection, spec, None, with_preprocessing, ckpt)]
