"""Open Inference Protocol (KServe v2) types and codecs, independent of the HTTP framework.

JSON tensors and the binary tensor extension (``Inference-Header-Content-Length``)
as Triton's clients speak them. Every malformed request becomes a ``ProtocolError``
(a 4xx), never an exception from numpy or pydantic.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vggexport.errors import VggExportError

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64), "FP16": np.dtype(np.float16),
    "UINT8": np.dtype(np.uint8), "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64), "BOOL": np.dtype(np.bool_),
}


class ProtocolError(VggExportError):
    http_status = 400


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(default_factory=dict)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise ProtocolError("request JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail); the tail is empty without the binary extension."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {length} is outside the body's {len(body)} bytes")
    return body[:length], body[length:]


def parse_request(body: bytes, header_length: str | None = None) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    header, binary = split_body(body, header_length)
    raw = parse_json(header)
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise ProtocolError(f"invalid inference request at {where}: {first['msg']}") from None
    tensors, offset = {}, 0
    for item in request.inputs:
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input {item.name!r}: binary_data_size {size!r} runs past the body")
            tensors[item.name] = decode_binary(item, binary[offset : offset + size])
            offset += size
        else:
            tensors[item.name] = decode_json_tensor(item)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, tensors


def check_shape(item: RequestInput) -> int:
    if any(not isinstance(d, int) or d < 0 for d in item.shape):
        raise ProtocolError(f"input {item.name!r}: shape {item.shape} must be non-negative integers")
    count = int(np.prod(item.shape, dtype=np.int64)) if item.shape else 1
    if count > 1 << 28:
        raise ProtocolError(f"input {item.name!r}: shape {item.shape} is too large")
    return count


def dtype_of(item: RequestInput) -> np.dtype[Any]:
    if item.datatype not in DATATYPES:
        raise ProtocolError(f"input {item.name!r}: unsupported datatype {item.datatype!r}")
    return DATATYPES[item.datatype]


def decode_binary(item: RequestInput, raw: bytes) -> np.ndarray:
    dtype, count = dtype_of(item), check_shape(item)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input {item.name!r}: {len(raw)} bytes for shape {item.shape} of {item.datatype}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(item.shape)


def decode_json_tensor(item: RequestInput) -> np.ndarray:
    dtype, count = dtype_of(item), check_shape(item)
    if item.data is None:
        raise ProtocolError(f"input {item.name!r} has no data")
    try:
        array = np.asarray(item.data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input {item.name!r}: data is not a list of {item.datatype} numbers") from None
    if array.size != count:
        raise ProtocolError(f"input {item.name!r}: {array.size} values for shape {item.shape}")
    return array.reshape(item.shape)


def wants_binary(request: InferenceRequest, name: str) -> bool:
    for out in request.outputs or []:
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def encode_response(model_name: str, request: InferenceRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): binary outputs go after the JSON, as the client asked."""
    described, blobs = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_name(array.dtype)}
        if wants_binary(request, name):
            blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    header = json.dumps({"model_name": model_name, "model_version": "1", "id": request.id or "",
                         "outputs": described}, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def datatype_name(dtype: np.dtype[Any]) -> str:
    for name, known in DATATYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"no v2 datatype for {dtype}")
