"""Open Inference Protocol (KServe v2) REST types and codecs, independent of the web framework.

JSON tensors and the binary tensor extension (``Inference-Header-Content-Length``)
as Triton's clients speak them, BYTES tensors included (4-byte little-endian length
before each element). Every malformed request becomes a ``ProtocolError`` (a 400),
never an exception from numpy or pydantic. Shapes are strict integers (pydantic
would otherwise turn ``true`` into 1 and ``1.0`` into 1) and element counts are
Python ints, so no shape can overflow.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from vggexport.names import V2_TO_NUMPY
from vggexport.serve.dataplane import InferCall, InferResult, OutputRequest
from vggexport.serve.errors import ProtocolError

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES = "BYTES"
DATATYPES: dict[str, np.dtype[Any]] = {v2: np.dtype(numpy) for v2, numpy in V2_TO_NUMPY.items()}
INT64_MAX = 2**63 - 1
MAX_ELEMENTS = 1 << 28  # far above any real request here; a guard against allocating a crafted shape


class Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class RequestInput(Strict):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(Strict):
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferenceRequest(Strict):
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


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
    if not header_length.strip().isascii() or not header_length.strip().isdigit() or len(header_length) > 18:
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length[:40]!r}")
    length = int(header_length)
    if not 0 < length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {length} is outside the body's {len(body)} bytes")
    return body[:length], body[length:]


def element_count(name: str, shape: list[int]) -> int:
    if any(d < 0 or d > INT64_MAX for d in shape):
        raise ProtocolError(f"input {name!r}: shape {shape} needs non-negative int64 dimensions")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: shape {shape} has {count} elements, over the {MAX_ELEMENTS} limit")
    return count


def dtype_of(name: str, datatype: str) -> np.dtype[Any]:
    if datatype not in DATATYPES:
        raise ProtocolError(f"input {name!r}: unsupported datatype {datatype[:20]!r}")
    return DATATYPES[datatype]


def decode_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """Binary tensor bytes (HTTP binary extension or gRPC raw_input_contents) -> array of ``shape``."""
    dtype, count = dtype_of(name, datatype), element_count(name, shape)
    if datatype == BYTES:
        return decode_bytes_elements(name, raw, count).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input {name!r}: {len(raw)} bytes for shape {shape} of {datatype}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def decode_bytes_elements(name: str, raw: bytes, count: int) -> np.ndarray:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES element length runs past the data")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES element runs past the data")
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(items) != count:
        raise ProtocolError(f"input {name!r}: {len(items)} BYTES elements for {count} in the shape")
    return np.array(items, dtype=np.object_)


def encode_raw(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def decode_json_tensor(item: RequestInput) -> np.ndarray:
    dtype, count = dtype_of(item.name, item.datatype), element_count(item.name, item.shape)
    if item.data is None:
        raise ProtocolError(f"input {item.name!r} has no data")
    if item.datatype == BYTES:
        flat = list(flatten(item.data))
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {item.name!r}: BYTES data must be strings")
        array = np.array([x.encode() for x in flat], dtype=np.object_)
    else:
        try:
            array = np.asarray(item.data, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            raise ProtocolError(f"input {item.name!r}: data is not a list of {item.datatype} numbers") from None
    if array.size != count:
        raise ProtocolError(f"input {item.name!r}: {array.size} values for shape {item.shape}")
    return array.reshape(item.shape)


def flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from flatten(item)
    else:
        yield data


def classification_count(name: str, parameters: dict[str, Any] | None) -> int:
    value = (parameters or {}).get("classification", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"output {name!r}: classification must be a non-negative integer, got {value!r}")
    return value


def wants_binary(request: InferenceRequest, output: RequestOutput | None) -> bool:
    if output is not None and output.parameters and "binary_data" in output.parameters:
        return output.parameters["binary_data"] is True
    return (request.parameters or {}).get("binary_data_output") is True


def parse_request(body: bytes, header_length: str | None, model: str, version: str | None) -> InferCall:
    """An HTTP infer body (JSON, or JSON plus binary tail) -> the transport-neutral call."""
    header, binary = split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate(parse_json(header))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise ProtocolError(f"invalid inference request at {where}: {first['msg']}") from None
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for item in request.inputs:
        if item.name in tensors:
            raise ProtocolError(f"input {item.name!r} appears twice")
        size = (item.parameters or {}).get("binary_data_size")
        if size is None:
            tensors[item.name] = decode_json_tensor(item)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ProtocolError(f"input {item.name!r}: binary_data_size {size!r} runs past the body")
        tensors[item.name] = decode_raw(item.name, item.datatype, item.shape, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = None
    if request.outputs:  # absent or empty: every output
        outputs = [OutputRequest(o.name, classification_count(o.name, o.parameters), wants_binary(request, o))
                   for o in request.outputs]
    return InferCall(model=model, version=version, id=request.id or "", inputs=tensors, outputs=outputs,
                     binary_output=wants_binary(request, None))


def json_data(array: np.ndarray, name: str = "output") -> list[Any]:
    """The values as JSON numbers. JSON has no NaN or Infinity (strict parsers, JavaScript's among them, refuse
    them), so a non-finite output, which only out-of-range inputs produce, is refused in JSON; binary outputs
    carry it as it is."""
    if array.dtype == np.object_:
        return [item.decode("utf-8", "replace") for item in array.reshape(-1)]
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(f"output {name!r} is not finite (NaN or Inf) for this input, and JSON cannot carry "
                            "that: keep inputs in the model's range, or ask for the output as binary data")
    return array.reshape(-1).tolist()


def encode_response(result: InferResult) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): binary outputs go after the JSON, as the client asked."""
    described, blobs = [], []
    for output, array in result.outputs:
        entry: dict[str, Any] = {"name": output.name, "shape": list(array.shape), "datatype": datatype_name(array)}
        if output.binary:
            blob = encode_raw(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(array, output.name)
        described.append(entry)
    answer: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        answer["id"] = result.id  # echoed, and left out when the request had none, as Triton does
    answer["outputs"] = described
    header = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def datatype_name(array: np.ndarray) -> str:
    for name, known in DATATYPES.items():
        if known == array.dtype:
            return name
    raise ValueError(f"no v2 datatype for {array.dtype}")
