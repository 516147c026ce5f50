"""ONNX files read without torch and without a session: a vggexport export's bytes, ModelProto and metadata.

Every function takes a path or the ``ArtifactBytes`` a caller already read (and hashed): given bytes, it parses
those bytes, never the file on disk again. Export, verify, serve and deploy all read ONNX files through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggexport.errors import VggExportError
from vggexport.names import ONNX_ELEMENT_TO_V2
from vggexport.store.fileio import ArtifactBytes, ModelSource, artifact_of
from vggexport.store.manifest import read_checked

REQUIRED_KEYS = ("model_name", "class_names", "model_config")


def check_metadata(metadata: dict[str, str], path: Path) -> dict[str, str]:
    if "model_config" not in metadata:
        raise VggExportError(f"{path} is ONNX but not a vggexport export (no model_config metadata)")
    missing = [key for key in REQUIRED_KEYS if not metadata.get(key)]
    if missing:
        raise VggExportError(f"{path} lacks the metadata {', '.join(missing)}; re-export it with vggexport")
    return metadata


def read_onnx_artifact(source: ModelSource) -> ArtifactBytes:
    """The model's bytes, read once (unless already read) and checked against the manifest."""
    return read_checked(source, f"no ONNX model at {source}: run `vggexport onnx` first")


def parse_onnx(artifact: ArtifactBytes) -> Any:
    """The ModelProto of these bytes (external data is never loaded: it would be bytes no hash covers)."""
    import onnx

    if not artifact.data:
        raise VggExportError(f"{artifact.path} is empty (0 bytes): not a readable ONNX model")
    try:
        return onnx.load_model_from_string(artifact.data)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own; all mean "not ONNX"
        raise VggExportError(f"{artifact.path} is not a readable ONNX model ({type(exc).__name__})") from None


def read_onnx_metadata(source: ModelSource) -> dict[str, str]:
    """The metadata_props of a vggexport ONNX file (onnx package, no session), or a clear error."""
    artifact = read_onnx_artifact(source)
    proto = parse_onnx(artifact)
    return check_metadata({p.key: p.value for p in proto.metadata_props}, artifact.path)


def graph_io(source: ModelSource) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """([(name, v2 datatype, dims)] of the inputs, same of the outputs); -1 marks a dynamic dimension."""
    graph = parse_onnx(artifact_of(source)).graph

    def describe(values: Any) -> list[tuple[str, str, list[int]]]:
        found = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            found.append((value.name, ONNX_ELEMENT_TO_V2.get(tensor.elem_type, f"onnx type {tensor.elem_type}"), dims))
        return found

    initializers = {init.name for init in graph.initializer}
    return describe(v for v in graph.input if v.name not in initializers), describe(graph.output)
