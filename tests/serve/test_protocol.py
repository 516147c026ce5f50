from __future__ import annotations

import json

import numpy as np
import pytest

from vggexport.serve.protocol import HEADER_LENGTH, ProtocolError, encode_response, parse_request


def binary_body(array: np.ndarray) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": array.nbytes}}]}).encode()
    return header + array.tobytes(), str(len(header))


def test_json_and_binary_decode_to_the_same_tensor() -> None:
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32",
                                   "data": array.ravel().tolist()}]}).encode()
    _, from_json = parse_request(body)
    _, from_binary = parse_request(*binary_body(array))
    np.testing.assert_array_equal(from_json["input"], array)
    np.testing.assert_array_equal(from_binary["input"], array)


def test_binary_output_round_trip() -> None:
    request, _ = parse_request(json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32",
                                                       "data": [1]}],
                                           "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode())
    logits = np.array([[1.5, -2.0]], dtype=np.float32)
    body, length = encode_response("m", request, {"logits": logits})
    assert length is not None
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype=np.float32), logits.ravel())


@pytest.mark.parametrize(
    ("body", "header"),
    [
        (b"{", None),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"inputs": []}', None),
        (b'{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1]}]}', None),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "COMPLEX", "data": [1]}]}', None),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', None),
        (b'{"inputs": [{"name": "input", "shape": [-1], "datatype": "FP32", "data": [1]}]}', None),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32"}]}', None),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}]}', "abc"),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}]}', "100000"),
        (b'{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", '
         b'"parameters": {"binary_data_size": 8}}]}\x00\x00\x00\x00', "83"),
    ],
)
def test_malformed_requests_are_protocol_errors(body: bytes, header: str | None) -> None:
    with pytest.raises(ProtocolError):
        parse_request(body, header)
    assert HEADER_LENGTH == "Inference-Header-Content-Length"
