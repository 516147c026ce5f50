"""The PyTorch runners: eager (the reference), TorchScript and ``torch.export`` programs; torch is imported on
activation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vggexport.backend.base import Runner
from vggexport.errors import VggExportError
from vggexport.store.fileio import ModelSource


class TorchRunner(Runner):
    """PyTorch eager from a module or a checkpoint path. fp32 with TF32 off: the reference."""

    name = "pytorch"

    def __init__(self, source: Any, *, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__()
        self.source, self.device_name, self.precision = source, device, precision
        self.model: Any = None

    @property
    def provider(self) -> str:
        return self.device_name if self.precision == "fp32" else f"{self.device_name} {self.precision} autocast"

    def activate_impl(self) -> None:
        import torch

        from vggexport.hardware import resolve_device

        resolve_device(self.device_name)  # a clear error when CUDA is asked for and absent
        if self.device_name.startswith("cuda"):
            # TF32 would make the reference itself ~1e-3 off; parity is judged against true fp32.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.model = self.load()

    def load(self) -> Any:
        from vggexport.checkpoint import load_checkpoint

        if isinstance(self.source, (str, Path)):
            return load_checkpoint(self.source).build_model(self.device_name)
        return self.source.to(self.device_name).eval()

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from vggexport.hardware import autocast

        with torch.inference_mode(), autocast(torch.device(self.device_name), self.precision):
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device_name))
        return out.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self.model = None


class ExportedFileRunner(TorchRunner):
    """A vggexport file that torch loads together with its metadata (``load_file``: the export's own loader)."""

    def __init__(self, source: ModelSource, *, device: str = "cpu") -> None:
        super().__init__(source, device=device)
        self.metadata: dict[str, Any] = {}

    def load(self) -> Any:
        model, self.metadata = self.load_file()
        return model

    def load_file(self) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError


class TorchScriptRunner(ExportedFileRunner):
    name = "torchscript"

    def load_file(self) -> tuple[Any, dict[str, Any]]:
        from vggexport.export.torchscript import load_torchscript

        return load_torchscript(self.source, self.device_name)


class ExportedProgramRunner(ExportedFileRunner):
    """A ``torch.export`` program (model.pt2) on cpu or cuda."""

    name = "torch-export"

    def load_file(self) -> tuple[Any, dict[str, Any]]:
        from vggexport.export.pt2 import load_module

        return load_module(self.source, self.device_name)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        try:
            return super().infer_impl(batch)
        except AssertionError:
            # The program's shape guards fail with an AssertionError naming an internal symbol.
            size, channels = self.metadata.get("image_size", "?"), self.metadata.get("in_channels", "?")
            raise VggExportError(f"input shape {tuple(batch.shape)} does not match the program's "
                                 f"(batch, {channels}, {size}, {size})") from None
