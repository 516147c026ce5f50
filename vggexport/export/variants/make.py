"""Reduced-precision ONNX variants derived from the fp32 ``model.onnx``.

A variant keeps every metadata key of the fp32 file and adds ``precision``,
``fp32_sha256`` (the exact fp32 file it came from) and how it was made
(``calibration`` for int8, ``conversion`` for fp16). No key means fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vggexport import __version__
from vggexport.errors import VggExportError
from vggexport.store.fileio import ArtifactBytes, write_atomic
from vggexport.store.manifest import update_manifest
from vggexport.model import ModelConfig
from vggexport.export.variants.calibration import CalibrationConfig

VARIANT_PRECISIONS = ("fp16", "int8")
PRECISION_KEY, SOURCE_KEY = "precision", "fp32_sha256"


def fp32_source(path: Path) -> tuple[ArtifactBytes, Any, dict[str, str]]:
    """The fp32 file read once (its bytes, model and metadata), refusing a missing, changed, foreign, variant
    or uint8-input file. The variant is made from these bytes and names their sha256, whatever the path
    holds by then."""
    import onnx

    from vggexport.store.onnx_file import check_metadata, parse_onnx, read_onnx_artifact

    if not path.is_file():
        raise VggExportError(f"no fp32 ONNX model at {path}: run `vggexport onnx` (--precision fp32) first")
    artifact = read_onnx_artifact(path)
    proto = parse_onnx(artifact)
    metadata = check_metadata({p.key: p.value for p in proto.metadata_props}, path)
    if PRECISION_KEY in metadata:
        raise VggExportError(f"{path} is itself a {metadata[PRECISION_KEY]} variant: derive variants from the fp32 "
                             "model.onnx")
    if proto.graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise VggExportError(f"{path} takes uint8 pixels (--with-preprocessing): variants are made from the "
                             "float32-input model.onnx")
    return artifact, proto, metadata


def make_variant(fp32_path: str | Path, precision: str, out: str | Path, calibration: CalibrationConfig | None = None,
                 *, checkpoint_sha256: str | None = None) -> Path:
    """Write the ``precision`` variant of ``fp32_path`` to ``out`` (atomically) and record it in the manifest.

    With ``checkpoint_sha256``, refuse an fp32 file exported from another checkpoint (a stale model.onnx).
    """
    import onnx

    if precision not in VARIANT_PRECISIONS:
        raise VggExportError(f"unknown variant precision {precision!r}: choose {', '.join(VARIANT_PRECISIONS)}")
    fp32_path = Path(fp32_path)
    artifact, proto, metadata = fp32_source(fp32_path)
    if checkpoint_sha256 is not None and metadata.get("checkpoint_sha256") != checkpoint_sha256:
        raise VggExportError(f"{fp32_path} was exported from another checkpoint: re-run `vggexport onnx` "
                             "(--precision fp32) before making variants")
    config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
    if precision == "int8":
        from vggexport.export.variants.int8 import quantize_int8

        variant, record = quantize_int8(proto, config, calibration or CalibrationConfig())
        how = {"calibration": json.dumps(record)}
    else:
        from vggexport.export.variants.fp16 import convert_fp16

        variant, record = convert_fp16(proto)
        how = {"conversion": json.dumps(record)}
    del variant.metadata_props[:]
    for key, value in {**metadata, PRECISION_KEY: precision, SOURCE_KEY: artifact.sha256, **how}.items():
        variant.metadata_props.add(key=key, value=value)
    variant.doc_string = f"{proto.doc_string}; {precision} variant of the fp32 model whose sha256 is {SOURCE_KEY}"
    variant.producer_name, variant.producer_version = "vggexport", __version__
    onnx.checker.check_model(variant)
    written = write_atomic(out, lambda tmp: onnx.save_model(variant, str(tmp)))
    update_manifest(written.parent, [written])
    return written
