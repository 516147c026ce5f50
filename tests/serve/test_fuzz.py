"""Property-based fuzzing of the real server: whatever arrives, the answer is never a 5xx."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess

INFER = "/v2/models/vgg11_bn/infer"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
datatypes = st.sampled_from(["FP32", "FP64", "FP16", "UINT8", "INT32", "INT64", "BOOL", "BYTES", "fp32", ""])
tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "x", ""]), "shape": st.lists(st.integers(-2, 40), max_size=5),
     "datatype": datatypes},
    optional={"data": st.lists(st.floats(allow_nan=False, width=32) | st.integers(-5, 5), max_size=64) | json_values,
              "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "binary_data"]),
                                            st.integers(-8, 5000) | st.booleans(), max_size=2)},
)
v2_requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3)},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["logits", "probabilities", "z"])}),
                                  max_size=2), "id": st.text(max_size=5), "parameters": json_values},
)


def assert_client_error_or_ok(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@FUZZ
@given(body=json_values)
def test_any_json(server: ServerProcess, body: object) -> None:
    assert_client_error_or_ok(httpx.post(f"{server.url}{INFER}", content=json.dumps(body).encode(), timeout=30))


@FUZZ
@given(body=v2_requests)
def test_v2_shaped_requests(server: ServerProcess, body: dict[str, object]) -> None:
    assert_client_error_or_ok(httpx.post(f"{server.url}{INFER}", content=json.dumps(body).encode(), timeout=30))


@FUZZ
# Header values are printable ASCII: anything else is refused by the HTTP parser before the app sees it.
@given(raw=st.binary(max_size=2048),
       header=st.none() | st.integers(-5, 3000).map(str) | st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                                  max_size=4))
def test_raw_bytes_with_binary_header(server: ServerProcess, raw: bytes, header: str | None) -> None:
    headers = {} if header is None else {"Inference-Header-Content-Length": header}
    assert_client_error_or_ok(httpx.post(f"{server.url}{INFER}", content=raw, headers=headers, timeout=30))
    assert_client_error_or_ok(httpx.post(f"{server.url}/v2/models/vgg11_bn/classify", content=raw, timeout=30))
