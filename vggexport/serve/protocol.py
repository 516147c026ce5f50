"""Open Inference Protocol (KServe v2) REST types and codecs, independent of the web framework.

JSON tensors and the binary tensor extension (``Inference-Header-Content-Length``)
as Triton's clients speak them, BYTES tensors included (4-byte little-endian length
before each element). Every malformed request becomes a ``ProtocolError`` (a 400),
never an exception from numpy or pydantic. Shapes are strict integers
(``request_schema``) and element counts are Python ints, so no shape can overflow.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from typing import Any

import numpy as np

from vggexport.names import V2_TO_NUMPY
from vggexport.serve.dataplane import InferCall, InferResult, OutputRequest
from vggexport.serve.errors import ProtocolError
from vggexport.serve.request_schema import checked_request

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES = "BYTES"
DATATYPES: dict[str, np.dtype[Any]] = {v2: np.dtype(numpy) for v2, numpy in V2_TO_NUMPY.items()}
WIRE = {v2: dtype.newbyteorder("<") for v2, dtype in DATATYPES.items()}  # the byte order on the wire
V2_NAMES = {dtype: v2 for v2, dtype in DATATYPES.items()}  # dtype -> v2 datatype, for the answers
INT64_MAX = 2**63 - 1
LITTLE_ENDIAN = sys.byteorder == "little"
MAX_ELEMENTS = 1 << 28  # far above any real request here; a guard against allocating a crafted shape


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise ProtocolError("request JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail); the tail is empty without the binary extension. The tail is a view of the
    body, not a copy: the tensors decoded from it are views of the body too."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isascii() or not header_length.strip().isdigit() or len(header_length) > 18:
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length[:40]!r}")
    length = int(header_length)
    if not 0 < length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {length} is outside the body's {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


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


def decode_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """Binary tensor bytes (HTTP binary extension or gRPC raw_input_contents) -> array of ``shape``.

    A read-only view of ``raw``, not a copy, where the wire's little-endian order is the machine's: the batcher
    copies each request once, into its batch, and a batch of one goes to ONNX Runtime as it is.
    """
    dtype, count = dtype_of(name, datatype), element_count(name, shape)
    if datatype == BYTES:
        return decode_bytes_elements(name, raw, count).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input {name!r}: {len(raw)} bytes for shape {shape} of {datatype}")
    array = np.frombuffer(raw, dtype=WIRE[datatype])
    return (array if array.dtype.isnative else array.astype(dtype)).reshape(shape)


def decode_bytes_elements(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES element length runs past the data")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES element runs past the data")
        items.append(bytes(raw[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    if len(items) != count:
        raise ProtocolError(f"input {name!r}: {len(items)} BYTES elements for {count} in the shape")
    return np.array(items, dtype=np.object_)


def encode_raw(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not LITTLE_ENDIAN):
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # C order, whatever the array's strides


def decode_json_tensor(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    dtype, count = dtype_of(name, datatype), element_count(name, shape)
    if data is None:
        raise ProtocolError(f"input {name!r} has no data")
    if datatype == BYTES:
        flat = list(flatten(data))
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
        array = np.array([x.encode() for x in flat], dtype=np.object_)
    else:
        try:
            array = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            raise ProtocolError(f"input {name!r}: data is not a list of {datatype} numbers") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: {array.size} values for shape {shape}")
    return array.reshape(shape)


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


def wants_binary(request: dict[str, Any], output: dict[str, Any] | None) -> bool:
    parameters = output.get("parameters") if output is not None else None
    if parameters and "binary_data" in parameters:
        return parameters["binary_data"] is True
    return (request.get("parameters") or {}).get("binary_data_output") is True


def parse_request(body: bytes, header_length: str | None, model: str, version: str | None) -> InferCall:
    """An HTTP infer body (JSON, or JSON plus binary tail) -> the transport-neutral call."""
    header, binary = split_body(body, header_length)
    request = checked_request(parse_json(header))
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for item in request["inputs"]:
        name, datatype, shape = item["name"], item["datatype"], item["shape"]
        if name in tensors:
            raise ProtocolError(f"input {name!r} appears twice")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is None:
            tensors[name] = decode_json_tensor(name, datatype, shape, item.get("data"))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: binary_data_size {size!r} runs past the body")
        tensors[name] = decode_raw(name, datatype, shape, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = None
    if request.get("outputs"):  # absent or empty: every output
        outputs = [OutputRequest(o["name"], classification_count(o["name"], o.get("parameters")),
                                 wants_binary(request, o)) for o in request["outputs"]]
    return InferCall(model=model, version=version, id=request.get("id") or "", inputs=tensors, outputs=outputs,
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
    """(body, JSON header length or None): binary outputs go after the JSON, as the client asked.

    The JSON is ``{"model_name", "model_version", "id" (echoed, and left out when the request had none, as
    Triton does), "outputs": [{"name", "shape", "datatype", then "parameters": {"binary_data_size"} or
    "data"}]}``, compact. What repeats from answer to answer (the names, an output's description for its
    shape) is encoded once and kept; only the id, the sizes and the JSON data are encoded per answer.
    """
    parts, blobs = [answer_head(result.model_name, result.model_version)], []
    if result.id:
        parts.append(b',"id":' + compact(result.id))
    parts.append(b',"outputs":[')
    for index, (output, array) in enumerate(result.outputs):
        parts.append(output_head(output.name, array.shape, datatype_name(array), index > 0))
        if output.binary:
            blob = encode_raw(array)
            parts.append(b',"parameters":{"binary_data_size":%d}}' % len(blob))
            blobs.append(blob)
        else:
            parts += (b',"data":', compact(json_data(array, output.name)), b"}")
    parts.append(b"]}")
    header = b"".join(parts)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=8)
def answer_head(model_name: str, model_version: str) -> bytes:
    return b'{"model_name":%s,"model_version":%s' % (compact(model_name), compact(model_version))


@functools.lru_cache(maxsize=1024)  # an output's name, shape and type: a few per batch size the model sees
def output_head(name: str, shape: tuple[int, ...], datatype: str, after_another: bool) -> bytes:
    head = b'{"name":%s,"shape":%s,"datatype":%s' % (compact(name), compact(list(shape)), compact(datatype))
    return b"," + head if after_another else head


def datatype_name(array: np.ndarray) -> str:
    name = V2_NAMES.get(array.dtype)
    if name is None:
        raise ValueError(f"no v2 datatype for {array.dtype}")
    return name
