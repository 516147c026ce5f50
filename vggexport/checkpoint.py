"""Checkpoints that rebuild their model from the file alone (nanoGPT-style).

A checkpoint is a plain dict of tensors and primitives, so it loads with
``torch.load(weights_only=True)``; the ``ModelConfig`` inside it is all that is
needed to rebuild the architecture.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vggexport import __version__
from vggexport.errors import VggExportError, first_line
from vggexport.store.fileio import write_atomic
from vggexport.store.manifest import read_checked
from vggexport.model import VGG, ModelConfig, build_model

FORMAT = "vggexport.checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    payload: dict[str, Any]
    digest: str  # sha256 of the bytes the payload was loaded from (not of the file as it is now)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.payload["model_config"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.payload.get("metrics", {}))

    def sha256(self) -> str:
        return self.digest

    def build_model(self, device: torch.device | str = "cpu") -> VGG:
        """The model in eval mode, weights loaded, on ``device``."""
        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.payload["model"])
        except RuntimeError as exc:
            first = first_line(exc)
            raise VggExportError(f"{self.path}: weights do not match its model config ({first})") from None
        return model.to(device).eval()


def save_checkpoint(path: str | Path, *, model_config: ModelConfig, state: dict[str, Any]) -> Path:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vggexport_version": __version__,
        "model_config": model_config.to_dict(),
        **state,
    }
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    # Read once: the sha256 that exports and parity records name is that of the weights that were loaded.
    artifact = read_checked(path, f"no checkpoint at {path}: run `vggexport train` first (or pass --checkpoint)")
    try:
        payload = torch.load(io.BytesIO(artifact.data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = first_line(exc)
        raise VggExportError(f"{path} is not a readable checkpoint ({reason[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VggExportError(f"{path} is not a vggexport checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise VggExportError(f"{path} was written by a newer vggexport (format {payload['format_version']})")
    try:
        ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VggExportError(f"{path} has an invalid model config: {exc}") from None
    return Checkpoint(path, payload, artifact.sha256)
