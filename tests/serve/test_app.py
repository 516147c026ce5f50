"""Against a real `vggexport serve` process on 127.0.0.1: tritonclient, images, bad input, metrics, shutdown."""

from __future__ import annotations

import io
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import ServerProcess

MODEL = "vgg11_bn"


def offline_logits(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("binary", [False, True])
def test_official_tritonclient(server: ServerProcess, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}
    assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
    batch = inputs(5)
    request_input = httpclient.InferInput("input", list(batch.shape), "FP32")
    request_input.set_data_from_numpy(batch, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary),
               httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(MODEL, [request_input], outputs=outputs)
    expected = offline_logits(server.model, batch)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), np.ones(5), rtol=1e-5)
    client.close()


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.realdata
def test_image_endpoint_matches_offline_on_real_test_images(server: ServerProcess, real_data_dir: Path) -> None:
    import torch

    from vggexport.data import load_dataset
    from vggexport.export import read_onnx_metadata
    from vggexport.transforms import preprocess

    data = load_dataset("fashion-mnist", real_data_dir)
    images = data.test_images[:24]
    meta = read_onnx_metadata(server.model)
    with torch.no_grad():
        batch = preprocess(images, image_size=32, mean=json.loads(meta["mean"]), std=json.loads(meta["std"])).numpy()
    expected = offline_logits(server.model, batch).argmax(1)
    for i, image in enumerate(images):
        png = png_bytes(image[0].numpy())
        if i % 2:
            response = httpx.post(f"{server.url}/v2/models/{MODEL}/classify", content=png,
                                  headers={"content-type": "image/png"})
        else:
            response = httpx.post(f"{server.url}/v2/models/{MODEL}/classify?top_k=2",
                                  files={"file": ("x.png", png, "image/png")})
        assert response.status_code == 200, response.text
        top = response.json()["predictions"][0]
        assert top["index"] == expected[i]
        assert 0 < top["probability"] <= 1


def test_concurrent_requests_are_batched(server: ServerProcess) -> None:
    batches = [inputs(1, seed=i) for i in range(32)]

    def call(batch: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                            "data": batch.ravel().tolist()}]}
        response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(1, -1)

    def counter(name: str) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "{"))

    executions_before, inferences_before = counter("nv_inference_exec_count_total"), counter("nv_inference_count_total")
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, batches))
    expected = offline_logits(server.model, np.concatenate(batches))
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-5, atol=1e-6)
    executions = counter("nv_inference_exec_count_total") - executions_before
    assert counter("nv_inference_count_total") - inferences_before == 32
    assert executions < 32, "concurrent requests should share executions"


def test_metrics_are_exposed(server: ServerProcess) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("nv_inference_request_success_total", "nv_inference_request_failure_total",
                 "nv_inference_request_duration_seconds_bucket", "nv_inference_queue_duration_seconds_bucket",
                 "nv_inference_compute_infer_duration_seconds_bucket", "nv_inference_batch_size_bucket",
                 "nv_inference_count_total", "nv_inference_exec_count_total"):
        assert name in text


def v2(data: object = None, **fields: object) -> dict[str, object]:
    item = {"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32",
            "data": [0.0] * 1024 if data is None else data}
    item.update(fields)
    return {"inputs": [item]}


INFER = f"/v2/models/{MODEL}/infer"
BAD_REQUESTS: list[tuple[str, str, dict[str, object]]] = [
    ("malformed json", INFER, {"content": b"{not json"}),
    ("empty body", INFER, {"content": b""}),
    ("json array", INFER, {"json": [1, 2, 3]}),
    ("json string", INFER, {"json": "hello"}),
    ("no inputs", INFER, {"json": {}}),
    ("empty inputs", INFER, {"json": {"inputs": []}}),
    ("inputs not a list", INFER, {"json": {"inputs": "input"}}),
    ("input without name", INFER, {"json": {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}}),
    ("missing shape", INFER, {"json": {"inputs": [{"name": "input", "datatype": "FP32", "data": [1]}]}}),
    ("missing datatype", INFER, {"json": {"inputs": [{"name": "input", "shape": [1], "data": [1]}]}}),
    ("missing data", INFER, {"json": {"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32"}]}}),
    ("unknown datatype", INFER, {"json": v2(datatype="FP128")}),
    ("wrong datatype", INFER, {"json": v2(datatype="INT32", data=[0] * 1024)}),
    ("string data", INFER, {"json": v2(data=["x"] * 1024)}),
    ("nested garbage data", INFER, {"json": v2(data=[{"a": 1}] * 1024)}),
    ("too few values", INFER, {"json": v2(data=[0.0] * 10)}),
    ("too many values", INFER, {"json": v2(data=[0.0] * 2048)}),
    ("wrong shape", INFER, {"json": v2(shape=[1, 3, 32, 32], data=[0.0] * 3072)}),
    ("rank 3", INFER, {"json": v2(shape=[1, 32, 32])}),
    ("negative shape", INFER, {"json": v2(shape=[-1, 1, 32, 32])}),
    ("shape of strings", INFER, {"json": v2(shape=["a"])}),
    ("huge shape", INFER, {"json": v2(shape=[10**9, 1, 32, 32])}),
    ("zero batch", INFER, {"json": v2(shape=[0, 1, 32, 32], data=[])}),
    ("batch over limit", INFER, {"json": v2(shape=[65, 1, 32, 32], data=[0.0] * 65 * 1024)}),
    ("nan values", INFER, {"content": json.dumps(v2(data=[float("nan")] * 1024)).encode()}),
    ("unknown input name", INFER, {"json": v2(name="image")}),
    ("two inputs", INFER, {"json": {"inputs": [v2()["inputs"][0], v2(name="x")["inputs"][0]]}}),  # type: ignore[index]
    ("unknown output", INFER, {"json": {**v2(), "outputs": [{"name": "features"}]}}),
    ("unknown model", "/v2/models/resnet50/infer", {"json": v2()}),
    ("unknown model metadata", "/v2/models/resnet50", {}),
    ("bad header length", INFER, {"content": json.dumps(v2()).encode(),
                                  "headers": {"Inference-Header-Content-Length": "abc"}}),
    ("header length past body", INFER, {"content": json.dumps(v2()).encode(),
                                        "headers": {"Inference-Header-Content-Length": "999999"}}),
    ("binary size mismatch", INFER, {"content": json.dumps(v2(data=None, parameters={"binary_data_size": 4096}))
                                     .encode() + b"\x00" * 100, "headers": {}}),
    ("deeply nested json", INFER, {"content": b"[" * 200_000 + b"]" * 200_000}),
    ("oversized body", INFER, {"content": b" " * (2 * 2**20)}),
    ("not an image", f"/v2/models/{MODEL}/classify", {"content": b"this is not a png"}),
    ("empty image", f"/v2/models/{MODEL}/classify", {"content": b""}),
    ("truncated png", f"/v2/models/{MODEL}/classify", {"content": b"\x89PNG\r\n\x1a\n\x00\x00"}),
    ("multipart without file", f"/v2/models/{MODEL}/classify", {"files": {"other": ("a", b"x")}}),
    ("bad top_k", f"/v2/models/{MODEL}/classify?top_k=abc", {"content": b"x"}),
]


@pytest.mark.parametrize(("case", "path", "kwargs"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_4xx_json(server: ServerProcess, case: str, path: str, kwargs: dict[str, object]) -> None:
    method = httpx.get if case == "unknown model metadata" else httpx.post
    response = method(f"{server.url}{path}", timeout=30, **kwargs)  # type: ignore[operator]
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:200])
    assert isinstance(response.json()["error"], str)
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_bad_input_battery_is_large_enough() -> None:
    assert len(BAD_REQUESTS) >= 30


def test_cuda_provider_without_gpu_fails_at_startup(served_onnx: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    process = ServerProcess(served_onnx, "--provider", "cuda")
    assert process.process.wait(timeout=60) == 1
    output = process.process.stdout.read() if process.process.stdout else ""
    assert "CUDA execution provider did not start" in output and "Traceback" not in output


def test_missing_model_fails_at_startup(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "nothing.onnx")
    assert process.process.wait(timeout=60) == 1
    assert "no ONNX model" in (process.process.stdout.read() if process.process.stdout else "")


def test_sigterm_drains_in_flight_requests(served_onnx: Path) -> None:
    process = ServerProcess(served_onnx, "--max-queue-delay-ms", "1500", "--provider", "cpu").wait_ready()
    batch = inputs(1)
    body = {"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": batch.ravel().tolist()}]}
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(httpx.post, f"{process.url}{INFER}", json=body, timeout=30)
        time.sleep(0.5)  # the request is now waiting in the batcher's queue
        code = process.stop()
        response = pending.result()
    assert response.status_code == 200
    # uvicorn shuts down gracefully, then re-raises SIGTERM so supervisors see how it ended
    assert code in (0, -signal.SIGTERM)


def test_workers_share_one_port_and_sum_their_metrics(served_onnx: Path) -> None:
    import subprocess

    process = ServerProcess(served_onnx, "--provider", "cpu", "--workers", "2").wait_ready(timeout=120)
    try:
        children = subprocess.run(["pgrep", "-P", str(process.process.pid)], capture_output=True, text=True).stdout
        body = {"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 1024}]}
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{process.url}{INFER}", json=body, timeout=30).status_code,
                                  range(24)))
        assert codes == [200] * 24
        text = httpx.get(f"{process.url}/metrics").text
        counted = sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("nv_inference_count_total"))
        assert counted == 24, text[:2000]
        assert len([pid for pid in children.split() if pid]) >= 2
    finally:
        assert process.stop() in (0, -signal.SIGTERM)
