"""Against a real `vggexport serve` process on 127.0.0.1: every bad request gets its 4xx JSON error, naming the
check that refused it; unknown models and versions are 404s; readiness by status code."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.conftest import INFER, MODEL, Served


def v2(data: object = None, **fields: object) -> dict[str, object]:
    item = {"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32",
            "data": [0.0] * 1024 if data is None else data}
    item.update(fields)
    return {"inputs": [item]}




CLASSIFY = f"/v2/models/{MODEL}/classify"


def binary_request(body: dict[str, object], tail: int) -> dict[str, object]:
    header = json.dumps(body).encode()
    return {"content": header + b"\x00" * tail, "headers": {"Inference-Header-Content-Length": str(len(header))}}


def v2_input(**fields: object) -> dict[str, object]:
    return v2(**fields)["inputs"][0]  # type: ignore[index,no-any-return]


# (case, path, httpx kwargs, status, a fragment of the error that proves the intended check answered)
BAD_REQUESTS: list[tuple[str, str, dict[str, object], int, str]] = [
    ("malformed json", INFER, {"content": b"{not json"}, 400, "malformed JSON"),
    ("empty body", INFER, {"content": b""}, 400, "malformed JSON"),
    ("json array", INFER, {"json": [1, 2, 3]}, 400, "invalid inference request"),
    ("json string", INFER, {"json": "hello"}, 400, "invalid inference request"),
    ("no inputs", INFER, {"json": {}}, 400, "at inputs"),
    ("empty inputs", INFER, {"json": {"inputs": []}}, 400, "at inputs"),
    ("inputs not a list", INFER, {"json": {"inputs": "input"}}, 400, "at inputs"),
    ("input without name", INFER, {"json": {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}}, 400,
     "inputs.0.name"),
    ("missing shape", INFER, {"json": {"inputs": [{"name": "input", "datatype": "FP32", "data": [1]}]}}, 400,
     "inputs.0.shape"),
    ("missing datatype", INFER, {"json": {"inputs": [{"name": "input", "shape": [1], "data": [1]}]}}, 400,
     "inputs.0.datatype"),
    ("missing data", INFER, {"json": {"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32"}]}},
     400, "has no data"),
    ("unknown datatype", INFER, {"json": v2(datatype="FP128")}, 400, "unsupported datatype"),
    ("wrong datatype", INFER, {"json": v2(datatype="INT32", data=[0] * 1024)}, 400, "must be FP32"),
    ("bytes datatype", INFER, {"json": v2(datatype="BYTES", data=["x"] * 1024)}, 400, "must be FP32"),
    ("string data", INFER, {"json": v2(data=["x"] * 1024)}, 400, "not a list of FP32"),
    ("nested garbage data", INFER, {"json": v2(data=[{"a": 1}] * 1024)}, 400, "not a list of FP32"),
    ("too few values", INFER, {"json": v2(data=[0.0] * 10)}, 400, "10 values for shape"),
    ("too many values", INFER, {"json": v2(data=[0.0] * 2048)}, 400, "2048 values for shape"),
    ("wrong shape", INFER, {"json": v2(shape=[1, 3, 32, 32], data=[0.0] * 3072)}, 400, "expected [-1, 1, 32, 32]"),
    ("rank 3", INFER, {"json": v2(shape=[1, 32, 32])}, 400, "expected [-1, 1, 32, 32]"),
    ("negative shape", INFER, {"json": v2(shape=[-1, 1, 32, 32])}, 400, "non-negative int64"),
    ("shape of strings", INFER, {"json": v2(shape=["a"])}, 400, "shape.0"),
    ("boolean shape", INFER, {"json": v2(shape=[True, 1, 32, 32])}, 400, "shape.0"),
    ("float shape", INFER, {"json": v2(shape=[1.0, 1, 32, 32])}, 400, "shape.0"),
    ("huge shape", INFER, {"json": v2(shape=[10**9, 1, 32, 32])}, 400, "over the"),
    ("shape beyond int64", INFER, {"json": v2(shape=[2**64, 1], data=[])}, 400, "non-negative int64"),
    ("overflowing shape, empty data", INFER, {"json": v2(shape=[2**32, 2**32], data=[])}, 400, "over the"),
    ("overflowing shape, zero binary size", INFER,
     binary_request(v2(shape=[2**32, 2**32], data=None, parameters={"binary_data_size": 0}), 0), 400, "over the"),
    ("zero batch", INFER, {"json": v2(shape=[0, 1, 32, 32], data=[])}, 400, "every dimension must be >= 1"),
    ("batch over limit", INFER, {"json": v2(shape=[65, 1, 32, 32], data=[0.0] * 65 * 1024)}, 400,
     "exceeds max batch size"),
    ("nan values", INFER, {"content": json.dumps(v2(data=[float("nan")] * 1024)).encode()}, 400, "NaN or infinity"),
    ("infinite values", INFER, {"content": json.dumps(v2(data=[float("inf")] * 1024)).encode()}, 400,
     "NaN or infinity"),
    ("numeric id", INFER, {"json": {"id": 7, **v2()}}, 400, "at id"),
    ("unknown input name", INFER, {"json": v2(name="image")}, 400, "unknown input 'image'"),
    ("two inputs", INFER, {"json": {"inputs": [v2_input(), v2_input(name="x")]}}, 400, "exactly one input"),
    ("same input twice", INFER, {"json": {"inputs": [v2_input(), v2_input()]}}, 400, "appears twice"),
    ("unknown output", INFER, {"json": {**v2(), "outputs": [{"name": "features"}]}}, 400, "unknown output"),
    ("negative classification", INFER,
     {"json": {**v2(), "outputs": [{"name": "logits", "parameters": {"classification": -1}}]}}, 400,
     "classification must be"),
    ("unknown model", "/v2/models/resnet50/infer", {"json": v2()}, 404, "unknown model 'resnet50'"),
    ("unknown version", f"/v2/models/{MODEL}/versions/99/infer", {"json": v2()}, 404, "no version '99'"),
    ("bad header length", INFER, {"content": json.dumps(v2()).encode(),
                                  "headers": {"Inference-Header-Content-Length": "abc"}}, 400,
     "must be a non-negative integer"),
    ("header length past body", INFER, {"content": json.dumps(v2()).encode(),
                                        "headers": {"Inference-Header-Content-Length": "999999"}}, 400,
     "outside the body"),
    ("binary size mismatch", INFER, binary_request(v2(data=None, parameters={"binary_data_size": 4096}), 100), 400,
     "binary_data_size 4096 runs past the body"),
    ("binary size disagrees with shape", INFER,
     binary_request(v2(data=None, parameters={"binary_data_size": 100}), 100), 400, "100 bytes for shape"),
    ("deeply nested json", INFER, {"content": b"[" * 200_000 + b"]" * 200_000}, 400, "nested too deeply"),
    ("oversized body", INFER, {"content": b" " * (2 * 2**20)}, 413, "exceeds the"),
    ("not an image", CLASSIFY, {"content": b"this is not a png"}, 400, "not a readable image"),
    ("empty image", CLASSIFY, {"content": b""}, 400, "empty image body"),
    ("truncated png header", CLASSIFY, {"content": b"\x89PNG\r\n\x1a\n\x00\x00"}, 400, "not a readable image"),
    ("multipart without file", CLASSIFY, {"files": {"other": ("a", b"x")}}, 400, "field 'file'"),
    ("bad top_k", f"{CLASSIFY}?top_k=abc", {"content": b"x"}, 400, "top_k"),
    ("classify unknown model", "/v2/models/resnet50/classify", {"content": b"x"}, 404, "unknown model"),
    ("unknown route", "/v2/models/vgg11_bn/explain", {"content": b"x"}, 404, "Not Found"),
]


GETS = {
    "unknown model metadata": ("/v2/models/resnet50", 404, "unknown model"),
    "unknown version metadata": (f"/v2/models/{MODEL}/versions/2", 404, "no version '2'"),
    "unknown model ready": ("/v2/models/resnet50/ready", 404, "unknown model"),
    "unknown version ready": (f"/v2/models/{MODEL}/versions/0/ready", 404, "no version '0'"),
}


@pytest.mark.parametrize(("case", "path", "kwargs", "status", "message"), BAD_REQUESTS,
                         ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_its_4xx_json(server: Served, case: str, path: str, kwargs: dict[str, object], status: int,
                                     message: str) -> None:
    response = httpx.post(f"{server.url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, (case, response.status_code, response.text[:300])
    assert message in response.json()["error"], (case, response.text[:300])
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize("case", sorted(GETS))
def test_unknown_models_and_versions_are_404(server: Served, case: str) -> None:
    path, status, message = GETS[case]
    response = httpx.get(f"{server.url}{path}", timeout=30)
    assert response.status_code == status and message in response.json()["error"], response.text


def test_version_1_and_readiness_by_status_code(server: Served) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/versions/1/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/versions/1").json()["versions"] == ["1"]
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/versions/1/infer", json={"id": "abc", **v2()})
    assert response.status_code == 200 and response.json()["id"] == "abc"
    assert response.json()["model_version"] == "1"

