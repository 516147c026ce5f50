"""Against a real `vggexport serve` process on 127.0.0.1: tritonclient, images, batching, metrics."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.serve_process import ServerProcess
from tests.serve.conftest import MODEL, Served, inputs


def offline_logits(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


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

