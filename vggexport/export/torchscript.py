"""``model.torchscript.pt``: the traced model, with the metadata and ModelConfig as extra files."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from vggexport.checkpoint import Checkpoint
from vggexport.errors import VggExportError, first_line
from vggexport.export.metadata import TORCHSCRIPT_CONFIG, TORCHSCRIPT_METADATA, export_metadata
from vggexport.model import example_input
from vggexport.store.fileio import ModelSource, write_atomic
from vggexport.store.manifest import read_checked, update_manifest


def export_torchscript(ckpt: Checkpoint, out: str | Path) -> Path:
    """Trace on CPU in eval mode; the graph has no device constants, so it loads on CUDA too."""
    model = ckpt.build_model("cpu")
    extra = {TORCHSCRIPT_CONFIG: json.dumps(ckpt.model_config.to_dict()),
             TORCHSCRIPT_METADATA: json.dumps(export_metadata(ckpt))}
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream; it still works and we test that it does.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model, example_input(ckpt.model_config), check_trace=False)
        written = write_atomic(out, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    update_manifest(written.parent, [written])
    return written


def load_torchscript(source: ModelSource,
                     device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The module and its metadata from a path or from bytes already read (then exactly those bytes)."""
    artifact = read_checked(source, f"no TorchScript model at {source}: run `vggexport torchscript` first")
    extra = {TORCHSCRIPT_CONFIG: "", TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(io.BytesIO(artifact.data), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        first = first_line(exc, 120)
        raise VggExportError(f"{artifact.path} is not a readable TorchScript model ({first})") from None
    if not extra[TORCHSCRIPT_METADATA]:
        raise VggExportError(f"{artifact.path} is TorchScript but not a vggexport export (no {TORCHSCRIPT_METADATA})")
    return module.eval(), json.loads(extra[TORCHSCRIPT_METADATA])
