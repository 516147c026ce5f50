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

from vggexport.backend.onnxrt import default_threads
from tests.conftest import ServerProcess
from tests.serve.conftest import Served

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
def test_image_endpoint_matches_the_preprocessing_graph_on_real_test_images(server: Served,
                                                                           real_data_dir: Path) -> None:
    from vggexport.data.load import load_dataset

    images = load_dataset("fashion-mnist", real_data_dir).test_images[:24].numpy()
    session = ort.InferenceSession(str(server.model.with_name("model.preprocessing.onnx")),
                                   providers=["CPUExecutionProvider"])
    # One batch of 24 offline, one image at a time on the server: a batch size can move the last bits of a
    # logit, so the class is compared where the top two are further apart than that, the probability always.
    logits = session.run(None, {"input": images})[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    top2 = np.sort(logits, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1e-4
    assert decided.sum() >= 20  # near-ties are rare: the comparison covers most images
    expected = logits.argmax(1)
    for i, image in enumerate(images):
        png = png_bytes(image[0])
        if i % 2:
            response = httpx.post(f"{server.url}/v2/models/{MODEL}/classify", content=png,
                                  headers={"content-type": "image/png"})
        else:
            response = httpx.post(f"{server.url}/v2/models/{MODEL}/classify?top_k=2",
                                  files={"file": ("x.png", png, "image/png")})
        assert response.status_code == 200, response.text
        top = response.json()["predictions"][0]
        if decided[i]:
            assert top["index"] == expected[i], i
        assert top["probability"] == pytest.approx(probabilities[i, top["index"]], abs=1e-5), i
        assert 0 < top["probability"] <= 1


def test_concurrent_requests_are_batched(served_folder: Path) -> None:
    """32 requests from 16 threads run as exactly 2 batches of 16, whatever the timing.

    A batch of 16 closes the moment it is full (the 10 s queue delay is only a backstop), and no thread
    sends its second request before the first one is answered, so none can arrive in the first batch.
    """
    process = Served(served_folder / "model.onnx", "--max-batch-size", "16", "--max-queue-delay-ms", "10000")
    process.wait_ready()
    batches = [inputs(1, seed=i) for i in range(32)]

    def call(batch: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                            "data": batch.ravel().tolist()}]}
        response = httpx.post(f"{process.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(1, -1)

    def counter(name: str) -> float:
        text = httpx.get(f"{process.url}/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "{"))

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(call, batches))
        executions, inferences = counter("nv_inference_exec_count_total"), counter("nv_inference_count_total")
    finally:
        process.stop()
    expected = offline_logits(process.model, np.concatenate(batches))
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-5, atol=1e-6)
    assert inferences == 32
    assert executions == 2, "16 concurrent requests should share one execution"


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


def test_cuda_provider_without_gpu_fails_at_startup(served_onnx: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    process = ServerProcess(served_onnx, "--provider", "cuda")
    assert process.process.wait(timeout=60) == 1
    output = process.process.stdout.read() if process.process.stdout else ""
    assert "CUDA execution provider did not start" in output and "Traceback" not in output


CUDA_LIBRARIES = ("libcublas", "libcudnn", "libcudart", "libcufft", "libcurand", "libnvrtc",
                  "libonnxruntime_providers_cuda")


def test_auto_provider_without_gpu_loads_no_cuda_library(served_onnx: Path) -> None:
    """onnxruntime-gpu lists its CUDA provider on any machine; auto must still not load CUDA where no GPU is."""
    from vggexport.backend.onnxrt import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    process = ServerProcess(served_onnx, "--provider", "auto").wait_ready()
    try:
        maps = Path(f"/proc/{process.process.pid}/maps").read_text()
        meta = httpx.get(f"{process.url}/v2/models/{MODEL}").json()
    finally:
        process.stop()
    assert [name for name in CUDA_LIBRARIES if name in maps] == []
    assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"


def test_missing_model_fails_at_startup(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "nothing.onnx")
    assert process.process.wait(timeout=60) == 1
    assert "no ONNX model" in (process.process.stdout.read() if process.process.stdout else "")


def test_sigterm_turns_not_ready_at_once_and_drains_in_flight_requests(served_folder: Path) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    process = Served(served_folder / "model.onnx", "--max-queue-delay-ms", "2000").wait_ready()
    client = grpcclient.InferenceServerClient(process.grpc_url)
    assert client.is_server_ready()
    body = {"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32",
                        "data": inputs(1).ravel().tolist()}]}
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(httpx.post, f"{process.url}{INFER}", json=body, timeout=30)
        time.sleep(0.5)  # the request is now waiting in the batcher's queue
        process.process.send_signal(signal.SIGTERM)
        # Wait for the server to take the signal (readiness turns 503), not for a guessed time.
        deadline = time.monotonic() + 10
        while (http_ready := httpx.get(f"{process.url}/v2/health/ready")).status_code == 200:
            assert time.monotonic() < deadline, "SIGTERM did not turn the server not ready"
            time.sleep(0.02)
        # while the request is in flight both ports stay open, not ready, refusing new work (as Triton)
        grpc_ready = client.is_server_ready()
        refused = httpx.post(f"{process.url}{INFER}", json=body, timeout=30)
        tensor = grpcclient.InferInput("input", [1, 1, 32, 32], "FP32")
        tensor.set_data_from_numpy(inputs(1))
        with pytest.raises(InferenceServerException, match="shutting down") as grpc_refused:
            client.infer("vgg11_bn", [tensor])
        response = pending.result()
    client.close()
    assert "UNAVAILABLE" in str(grpc_refused.value.status())  # gRPC's 503 while draining
    assert grpc_ready is False
    assert http_ready.status_code == 503 and http_ready.json() == {"ready": False}
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1"
    assert response.status_code == 200, response.text
    # uvicorn shuts down gracefully, then re-raises SIGTERM so supervisors see how it ended
    assert process.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "not ready, draining" in process.output()


def test_workers_share_one_port_and_sum_their_metrics(served_onnx: Path) -> None:
    import subprocess

    process = Served(served_onnx, "--workers", "2", "--instances", "2").wait_ready(timeout=120)
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
        config = httpx.get(f"{process.url}/v2/models/{MODEL}/config").json()  # each worker: 2 runs at once
        assert config["instance_group"] == [{"count": 4, "kind": "KIND_CPU"}]
    finally:
        assert process.stop() in (0, -signal.SIGTERM)
    # the cores split between a worker's instances, unless --threads says otherwise
    assert f"2 worker(s), 2 instance(s) of {default_threads(2)} thread(s)" in process.output()


def test_a_start_that_fails_stops_the_instance_threads_warm_up_started(served_folder: Path) -> None:
    """gRPC's port is taken, so the lifespan's start fails after warm-up: a server built in code keeps no thread."""
    import asyncio
    import socket

    from tests.serve.conftest import infer_threads
    from vggexport.errors import VggExportError
    from vggexport.serve.app import Listen, create_app
    from vggexport.serve.service import ServeConfig

    before = infer_threads()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = create_app(ServeConfig(model=str(served_folder / "model.onnx"), provider="cpu", gate="off", warmup=True),
                         Listen(host="127.0.0.1", grpc_port=taken.getsockname()[1]), phase=lambda line: None)
        assert len(infer_threads()) > len(before)  # warm-up ran on the instance's own thread

        async def start() -> None:
            async with app.router.lifespan_context(app):
                pass

        with pytest.raises(VggExportError, match="cannot listen for gRPC"):
            asyncio.run(start())
    assert infer_threads() == before
