"""``model.pt2``: a ``torch.export`` ExportedProgram, TorchScript's successor.

The program has a symbolic batch dimension and carries the same metadata as the
TorchScript export (``model_config.json`` and ``metadata.json`` in ``extra_files``),
so either file describes itself the same way.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vggexport.checkpoint import Checkpoint
from vggexport.errors import VggExportError, first_line
from vggexport.export.metadata import TORCHSCRIPT_CONFIG, TORCHSCRIPT_METADATA, export_metadata
from vggexport.model import example_input
from vggexport.store.fileio import ModelSource, write_atomic
from vggexport.store.manifest import read_checked, update_manifest

MAX_BATCH = 65536


def exported_program(ckpt: Checkpoint) -> torch.export.ExportedProgram:
    """Export the eval-mode model on CPU with a dynamic batch (the flip average included)."""
    model = ckpt.build_model("cpu")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(model, (example_input(ckpt.model_config),), dynamic_shapes={"x": {0: batch}})


def export_exported_program(ckpt: Checkpoint, out: str | Path) -> Path:
    program = exported_program(ckpt)
    extra = {TORCHSCRIPT_CONFIG: json.dumps(ckpt.model_config.to_dict()),
             TORCHSCRIPT_METADATA: json.dumps(export_metadata(ckpt))}

    def save(tmp: Path) -> None:
        # A file object: torch.export warns about a path without the .pt2 suffix (our temporary name).
        with open(tmp, "wb") as handle:
            torch.export.save(program, handle, extra_files=extra)

    written = write_atomic(out, save)
    update_manifest(written.parent, [written])
    return written


def load_exported_program(source: ModelSource) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """The program and its metadata, or a one-line error for a missing, changed, corrupt or foreign file.

    ``source``: a path, or bytes already read (and hashed): then exactly those bytes are loaded.
    """
    artifact = read_checked(source, f"no torch.export model at {source}: run `vggexport export` first")
    path = artifact.path
    extra = {TORCHSCRIPT_CONFIG: "", TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings(), quiet_logger("torch.export"):
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(artifact.data), extra_files=extra)
    except Exception as exc:  # zipfile, pickle, JSON and torch's own errors all mean "not a readable .pt2"
        first = first_line(exc, 120)
        raise VggExportError(f"{path} is not a readable torch.export program ({type(exc).__name__}: {first})") \
            from None
    if not extra[TORCHSCRIPT_METADATA]:
        raise VggExportError(f"{path} is a torch.export program but not a vggexport export (no {TORCHSCRIPT_METADATA})")
    try:
        metadata = json.loads(extra[TORCHSCRIPT_METADATA])
    except ValueError:
        raise VggExportError(f"{path} has an unreadable {TORCHSCRIPT_METADATA}") from None
    return program, metadata


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """torch.export.load logs a full traceback before it tries its legacy format; our one line says it all."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_module(source: ModelSource, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A callable module on ``device``.

    ``move_to_device_pass`` moves weights, buffers and the device arguments
    recorded in the graph; ``.module().to(device)`` would move the weights only.
    """
    program, metadata = load_exported_program(source)
    if device != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module(), metadata
