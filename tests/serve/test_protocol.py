from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vggexport.serve.dataplane import InferResult, OutputRequest, classify
from vggexport.serve.protocol import ProtocolError, datatype_name, encode_raw, encode_response, json_data, parse_request


def parse(body: bytes, header: str | None = None):  # type: ignore[no-untyped-def]
    return parse_request(body, header, "m", None)


def binary_body(array: np.ndarray, datatype: str = "FP32", raw: bytes | None = None) -> tuple[bytes, str]:
    blob = array.tobytes() if raw is None else raw
    header = json.dumps({"inputs": [{"name": "input", "shape": list(array.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return header + blob, str(len(header))


def test_json_and_binary_decode_to_the_same_tensor() -> None:
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32",
                                   "data": array.ravel().tolist()}]}).encode()
    np.testing.assert_array_equal(parse(body).inputs["input"], array)
    np.testing.assert_array_equal(parse(*binary_body(array)).inputs["input"], array)


def test_bytes_tensors_round_trip_in_json_and_binary() -> None:
    words = [b"a", b"", "é".encode()]
    raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    from_binary = parse(*binary_body(np.empty(3, np.object_), "BYTES", raw)).inputs["input"]
    from_json = parse(json.dumps({"inputs": [{"name": "input", "shape": [3], "datatype": "BYTES",
                                              "data": ["a", "", "é"]}]}).encode()).inputs["input"]
    assert list(from_binary) == list(from_json) == words
    result = InferResult("m", "1", "x", [(OutputRequest("out", binary=True), from_binary)])
    body, length = encode_response(result)
    assert length is not None and body[length:] == raw
    assert json.loads(body[:length])["outputs"][0] == {"name": "out", "shape": [3], "datatype": "BYTES",
                                                        "parameters": {"binary_data_size": len(raw)}}


def test_binary_output_round_trip_and_id_echo() -> None:
    call = parse(json.dumps({"id": "req-7", "inputs": [{"name": "input", "shape": [1], "datatype": "FP32",
                                                        "data": [1]}],
                             "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode())
    assert call.id == "req-7" and call.outputs == [OutputRequest("logits", 0, True)]
    logits = np.array([[1.5, -2.0]], dtype=np.float32)
    body, length = encode_response(InferResult("m", "1", call.id, [(call.outputs[0], logits)]))
    assert length is not None
    header = json.loads(body[:length])
    assert header["id"] == "req-7" and header["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype=np.float32), logits.ravel())


def test_no_or_empty_outputs_mean_every_output_and_a_missing_id_is_left_out() -> None:
    for outputs in ([], None):
        body = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}]}
        if outputs is not None:
            body["outputs"] = outputs
        call = parse(json.dumps(body).encode())
        assert call.outputs is None and call.id == ""
    header, _ = encode_response(InferResult("m", "1", "", [(OutputRequest("logits"), np.zeros((1, 2), np.float32))]))
    assert "id" not in json.loads(header)


def test_classification_strings_are_tritons_format() -> None:
    values = np.array([[1.0, 5.0, 10.0, 4.0], [0.5, 0.25, 0.125, 1.0]], np.float32)
    top = classify(values, 2, ["a", "b", "c", "d"])
    assert top.shape == (2, 2)
    assert top.tolist() == [[b"10.000000:2:c", b"5.000000:1:b"], [b"1.000000:3:d", b"0.500000:0:a"]]
    assert classify(values, 99, list("abcd")).shape == (2, 4)  # clamped to the class count
    assert classify(values, 1, ["a"]).tolist() == [[b"10.000000:2"], [b"1.000000:3"]]  # no label: no ":label"


def one_input(**fields: object) -> bytes:
    item = {"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}
    item.update(fields)
    return json.dumps({"inputs": [item]}).encode()


# (case, body, Inference-Header-Content-Length, the error the case must reach)
MALFORMED = [
    ("truncated json", b"{", None, "malformed JSON"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    ("no inputs", b'{"inputs": []}', None, "at inputs"),
    ("count mismatch", one_input(shape=[2]), None, "1 values for shape"),
    ("unknown datatype", one_input(datatype="COMPLEX"), None, "unsupported datatype"),
    ("string data", one_input(data=["a"]), None, "not a list of FP32"),
    ("negative dim", one_input(shape=[-1]), None, "non-negative int64"),
    ("dim beyond int64", one_input(shape=[2**63]), None, "non-negative int64"),
    ("overflowing product", one_input(shape=[2**32, 2**32], data=[]), None, "over the"),
    ("boolean dim", one_input(shape=[True]), None, "shape.0"),
    ("float dim", one_input(shape=[1.0]), None, "shape.0"),
    ("numeric id", json.dumps({"id": 5, "inputs": [{"name": "input", "shape": [1], "datatype": "FP32",
                                                    "data": [1]}]}).encode(), None, "at id"),
    ("no data", one_input(data=None), None, "has no data"),
    ("header length not a number", one_input(), "abc", "must be a non-negative integer"),
    ("header length past the body", one_input(), "100000", "outside the body"),
    ("header length of 5000 digits", one_input(), "9" * 5000, "must be a non-negative integer"),
    ("header length in other digits", one_input(), "٣", "must be a non-negative integer"),
    ("bad classification", json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}],
                                       "outputs": [{"name": "logits", "parameters": {"classification": True}}]}
                                      ).encode(), None, "classification must be"),
]


def binary_case(shape: list[int], size: object, tail: bytes) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    return header + tail, str(len(header))  # the header length is right: the JSON parses, the size check runs


BINARY = [
    ("size runs past the body", *binary_case([2], 8, b"\0" * 4), "binary_data_size 8 runs past the body"),
    ("size disagrees with the shape", *binary_case([2], 4, b"\0" * 4), "4 bytes for shape [2]"),
    ("negative size", *binary_case([1], -4, b"\0" * 4), "binary_data_size -4"),
    ("boolean size", *binary_case([1], True, b"\0" * 4), "binary_data_size True"),
    ("bytes left over", *binary_case([1], 4, b"\0" * 8), "4 bytes of binary data belong to no input"),
    ("overflowing shape, zero size", *binary_case([2**32, 2**32], 0, b""), "over the"),
]


@pytest.mark.parametrize(("case", "body", "header", "message"), [*MALFORMED, *BINARY],
                         ids=[c[0] for c in [*MALFORMED, *BINARY]])
def test_malformed_requests_reach_their_check(case: str, body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(body, header)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)
parameters = st.none() | st.dictionaries(st.text(max_size=3), json_values, max_size=2)
valid_requests = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries(
        {"name": st.text(max_size=3), "datatype": st.sampled_from(["FP32", "UINT8", ""]),
         "shape": st.lists(st.integers(-3, 2**65), max_size=4)},
        optional={"parameters": parameters, "data": json_values}), min_size=1, max_size=3)},
    optional={"id": st.none() | st.text(max_size=3), "parameters": parameters, "extra": json_values,
              "outputs": st.none() | st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)},
                                                                    optional={"parameters": parameters}), max_size=2)})
FIELDS = [(), ("id",), ("parameters",), ("inputs",), ("outputs",), ("inputs", 0), ("inputs", 0, "name"),
          ("inputs", 0, "shape"), ("inputs", 0, "shape", 0), ("inputs", 0, "datatype"), ("inputs", 0, "parameters"),
          ("outputs", 0), ("outputs", 0, "name"), ("outputs", 0, "parameters")]


def mutated(case: tuple[dict[str, object], tuple[object, ...], object]) -> object:
    """The valid request with the value at one place (where it exists) replaced by any JSON value."""
    document, path, value = case
    if not path:
        return value
    parent: object = document
    for key in path[:-1]:
        if isinstance(parent, dict) and key in parent:
            parent = parent[key]
        elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
            parent = parent[key]
        else:
            return document
    if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent)):
        parent[path[-1]] = value  # type: ignore[index]
    return document


# What a lax check would take for an int, a string, a list or an object.
TRICKY = [True, False, 1.0, 0, -1, 2**70, "1", "", None, [], {}, [1], {"name": "x"}, [{"name": "x"}]]
near_valid_requests = valid_requests | st.tuples(valid_requests, st.sampled_from(FIELDS),
                                                 st.sampled_from(TRICKY) | json_values).map(mutated)


@settings(max_examples=600, deadline=None)
@given(document=near_valid_requests)
def test_the_hand_check_accepts_what_the_schema_accepts_and_nothing_else(document: object) -> None:
    """The hand check is the hot path's shortcut past pydantic: it must agree with the schema both ways."""
    from pydantic import ValidationError

    from vggexport.serve.request_schema import InferenceRequest, well_formed

    try:
        InferenceRequest.model_validate(document)
        accepted = True
    except ValidationError:
        accepted = False
    assert well_formed(document) == accepted, document


def test_the_hand_check_agrees_with_the_schema_on_every_single_change() -> None:
    """Every place of a full request, given each tricky value in turn (what random examples may miss)."""
    import copy

    from pydantic import ValidationError

    from vggexport.serve.request_schema import InferenceRequest, well_formed

    full = {"id": "a", "parameters": {"p": 1}, "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                                           "parameters": {}, "data": [1, 2]}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    for path in FIELDS:
        for value in TRICKY:
            document = mutated((copy.deepcopy(full), path, value))
            try:
                InferenceRequest.model_validate(document)
                accepted = True
            except ValidationError:
                accepted = False
            assert well_formed(document) == accepted, (path, value)


def reference_encoding(result: InferResult) -> tuple[bytes, int | None]:
    """The answer built as one dict and dumped once: what the kept, pre-encoded pieces must add up to."""
    described, blobs = [], []
    for output, array in result.outputs:
        entry: dict[str, object] = {"name": output.name, "shape": list(array.shape),
                                    "datatype": datatype_name(array)}
        if output.binary:
            blobs.append(encode_raw(array))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = json_data(array, output.name)
        described.append(entry)
    answer: dict[str, object] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        answer["id"] = result.id
    answer["outputs"] = described
    header = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


@pytest.mark.parametrize("request_id", ["", "r-1", 'quote " and \\ and é and \u2028'])
@pytest.mark.parametrize("binary", [(False, False), (True, False), (False, True), (True, True)])
def test_the_answer_is_the_one_json_document_byte_for_byte(request_id: str, binary: tuple[bool, bool]) -> None:
    logits = np.random.default_rng(1).standard_normal((3, 10), dtype=np.float32)
    top = classify(logits, 2, [f"class {i} ü" for i in range(10)])
    for rows in (1, 3):
        outputs = [(OutputRequest("logits", binary=binary[0]), logits[:rows]),
                   (OutputRequest("probabilities", 2, binary[1]), top[:rows])]
        result = InferResult("vgg11_bn", "1", request_id, outputs)
        assert encode_response(result) == reference_encoding(result)
