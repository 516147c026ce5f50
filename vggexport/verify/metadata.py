"""An exported file's metadata must say what its checkpoint says.

An application that embeds the file preprocesses and labels from the metadata alone, so a wrong
``mean`` or two swapped class names are as broken as wrong weights, and fail verify the same way.
"""

from __future__ import annotations

import json

from vggexport.checkpoint import Checkpoint

# Entries that describe the exporting tool, not the model: a re-export by a newer vggexport keeps its verdict.
TOOL_KEYS = frozenset({"vggexport_version"})
PRECISION_KEYS = frozenset({"precision", "calibration", "fp32_sha256"})


def metadata_mismatches(found: dict[str, str], expected: dict[str, str], *, where: str = "metadata") -> list[str]:
    """One line per entry of ``expected`` that ``found`` lacks or contradicts, naming both values."""
    problems = []
    for key, wanted in expected.items():
        if key in TOOL_KEYS:
            continue
        if key not in found:
            problems.append(f"[{where}] {key!r} is missing (the checkpoint says {short(wanted)})")
        elif found[key] != wanted:  # exact text: readers in other languages parse it, "32.0" is not "32"
            problems.append(f"[{where}] {key!r} is {short(found[key])} but the checkpoint says {short(wanted)}")
    return problems


def short(value: str, limit: int = 120) -> str:
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} chars)"


def expected_metadata(ckpt: Checkpoint, *, takes_pixels: bool) -> dict[str, str]:
    from vggexport.export.metadata import export_metadata

    return export_metadata(ckpt, preprocessing=takes_pixels)


def check_file_metadata(found: dict[str, str], ckpt: Checkpoint, *, takes_pixels: bool,
                        known_precisions: tuple[str, ...]) -> list[str]:
    problems = metadata_mismatches(found, expected_metadata(ckpt, takes_pixels=takes_pixels))
    precision = found.get("precision", "fp32")
    if precision not in known_precisions:
        problems.append(f"[metadata] 'precision' is {precision!r}: expected one of {', '.join(known_precisions)}")
    return problems


def check_torchscript_config(model_config_json: str, ckpt: Checkpoint) -> list[str]:
    """TorchScript also carries model_config.json among its extra files."""
    wanted = json.dumps(ckpt.model_config.to_dict())
    return metadata_mismatches({"model_config.json": model_config_json}, {"model_config.json": wanted},
                               where="extra files")
