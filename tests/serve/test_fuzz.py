"""Property-based fuzzing of the real server: whatever arrives, the answer is never a 5xx."""

from __future__ import annotations

import json

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.conftest import INFER
from tests.serve_process import ServerProcess

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


# Requests that get past the parsers: a valid JSON header, its true length in Inference-Header-Content-Length,
# and a tail of float32 bytes (the right size or not), or the JSON form with correctly shaped hostile data.
SHAPE = (1, 32, 32)
ELEMENTS = SHAPE[0] * SHAPE[1] * SHAPE[2]
HOSTILE_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf, 3.0e38, -3.0e38, 1e-45, -1e-45, 1e-38, 0.0, -0.0])
finite_or_hostile = st.floats(-10, 10, width=32) | HOSTILE_FLOATS


def tensors(rows: st.SearchStrategy[int]) -> st.SearchStrategy[np.ndarray]:
    """(rows, 1, 32, 32) float32: ordinary values with a few hostile ones planted where Hypothesis chooses."""
    def build(n: int, base: float, planted: list[tuple[int, float]]) -> np.ndarray:
        array = np.full(n * ELEMENTS, base, np.float32)
        for index, value in planted:
            array[index % array.size] = value
        return array.reshape(n, *SHAPE)

    return st.builds(build, rows, st.floats(-2, 2, width=32),
                     st.lists(st.tuples(st.integers(0, 64 * ELEMENTS), finite_or_hostile), max_size=6))


def binary_body(batch: np.ndarray, tail: bytes, declared: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": declared}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header + tail, {"Inference-Header-Content-Length": str(len(header)),
                           "content-type": "application/octet-stream"}


def executions(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    (line,) = [line for line in text.splitlines() if line.startswith("nv_inference_exec_count_total")]
    return float(line.split()[-1])


def check_answer(response: httpx.Response, batch: np.ndarray, well_formed: bool) -> None:
    """A well-formed request is run (200) exactly when its values are finite, else refused for its values;
    a malformed one (a tail of another size than declared or shaped) is a 400 whatever its values."""
    assert_client_error_or_ok(response)
    if not well_formed:
        error = response.json()["error"] if response.status_code == 400 else ""
        assert "bytes for shape" in error or "runs past the body" in error, response.text[:300]
    elif np.isfinite(batch).all():
        assert response.status_code == 200, response.text[:300]
    else:
        assert response.status_code == 400 and "NaN or infinity" in response.json()["error"], response.text[:300]


def test_binary_tensors_with_hostile_tails_reach_the_model(server: ServerProcess) -> None:
    """The batcher, the decoder and ONNX Runtime are fuzzed: every 200 is one model execution (requests are
    sequential, so none share a batch), only a tail of exactly the declared size is ever run, and the model
    really ran on many of the examples (counted by the server's own nv_inference_exec_count)."""
    reached: list[int] = []

    @given(batch=tensors(st.integers(1, 4)), cut=st.just(0) | st.integers(-8, 8),
           lie=st.sampled_from([False, False, False, True]))
    @FUZZ
    def one_request(batch: np.ndarray, cut: int, lie: bool) -> None:
        data = batch.tobytes()
        tail = data[:len(data) + cut] if cut < 0 else data + b"\x00" * cut
        body, headers = binary_body(batch, tail, len(tail) + (4 if lie else 0))
        before = executions(server)
        response = httpx.post(f"{server.url}{INFER}", content=body, headers=headers, timeout=30)
        check_answer(response, batch, well_formed=cut == 0 and not lie)
        ran = int(executions(server) - before)
        assert ran == (1 if response.status_code == 200 else 0), (response.status_code, response.text[:200])
        reached.append(ran)
        if response.status_code == 200:  # huge finite inputs may overflow inside the model: binary carries NaN
            length = int(response.headers["Inference-Header-Content-Length"])
            assert json.loads(response.content[:length])["outputs"][0]["shape"] == [len(batch), 10]
            assert len(response.content) - length == len(batch) * 10 * 4

    one_request()
    assert sum(reached) >= 10, f"only {sum(reached)} of {len(reached)} examples reached the model"


@given(batch=tensors(st.integers(1, 2)))
@FUZZ
def test_json_tensors_with_hostile_values(server: ServerProcess, batch: np.ndarray) -> None:
    """JSON has no NaN or Infinity: a non-finite input is refused before the model (json.dumps writes them, the
    server reads them and says so); a finite one runs once, and its logits come back as JSON numbers, or, where
    huge inputs overflow inside the model, as a 400 saying JSON cannot carry them (binary outputs can)."""
    body = {"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                        "data": [float(v) for v in batch.reshape(-1)]}]}
    before = executions(server)
    response = httpx.post(f"{server.url}{INFER}", content=json.dumps(body).encode(), timeout=30)
    assert_client_error_or_ok(response)
    finite = bool(np.isfinite(batch).all())
    assert executions(server) - before == (1 if finite else 0)
    if response.status_code == 200:
        logits = np.array(json.loads(response.text, parse_constant=reject)["outputs"][0]["data"], np.float32)
        assert finite and logits.shape == (len(batch) * 10,) and np.isfinite(logits).all()
    elif finite:
        assert response.status_code == 400 and "JSON cannot carry" in response.json()["error"], response.text
    else:
        assert response.status_code == 400 and "NaN or infinity" in response.json()["error"], response.text


def reject(constant: str) -> None:
    raise AssertionError(f"the server wrote {constant}, which is not JSON")
