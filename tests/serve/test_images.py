"""Images, the uint8 preprocessing model, backpressure, failures and the torch-free process, on real servers."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.serve.conftest import Served, endless_model, failing_model

MODEL = "vgg11_bn"
CLASSIFY = f"/v2/models/{MODEL}/classify"


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_return_input_is_exactly_the_pixels_the_model_saw(server: Served) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    response = httpx.post(f"{server.url}{CLASSIFY}?return_input=true&top_k=10", content=encode(Image.fromarray(pixels)))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["predictions"]) == 10
    url = answer["input_image"]
    assert url.startswith("data:image/png;base64,")
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    np.testing.assert_array_equal(seen, pixels)  # 32x32 in, 32x32 model: the resize is an identity
    big = httpx.post(f"{server.url}{CLASSIFY}?return_input=true",
                     content=encode(Image.fromarray(np.tile(pixels, (3, 2))).convert("RGB"), "JPEG"))
    assert big.status_code == 200, big.text
    shown = Image.open(io.BytesIO(base64.b64decode(big.json()["input_image"].split(",", 1)[1])))
    assert shown.size == (32, 32) and shown.mode == "L"


@pytest.mark.parametrize(("case", "make", "status", "message"), [
    ("over the pixel limit", lambda: encode(Image.new("L", (7000, 6000))), 413, "exceeds --max-image-pixels"),
    ("decompression bomb", lambda: encode(Image.new("1", (20000, 20000))), 413, "decompression bomb"),
    ("truncated png", lambda: encode(Image.new("RGB", (300, 300), (9, 8, 7)))[:-60], 400, "truncated"),
    ("truncated jpeg", lambda: encode(Image.effect_noise((300, 300), 50), "JPEG")[:2000], 400, "truncated"),
    ("tiff is not accepted", lambda: encode(Image.new("L", (8, 8)), "TIFF"), 400, "not a readable image"),
])
def test_hostile_images_get_4xx(server: Served, case: str, make: Callable[[], bytes], status: int,
                                message: str) -> None:
    response = httpx.post(f"{server.url}{CLASSIFY}", content=make(), timeout=60)
    assert response.status_code == status, (case, response.text)
    assert message in response.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_serving_the_preprocessing_model_directly_takes_uint8(served_folder: Path) -> None:
    path = served_folder / "model.preprocessing.onnx"
    process = Served(path, "--max-image-pixels", "4096").wait_ready()
    try:
        meta = httpx.get(f"{process.url}/v2/models/{MODEL}").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, -1, -1]}]
        pixels = np.random.default_rng(2).integers(0, 256, (2, 1, 28, 40), dtype=np.uint8)
        tensor = {"name": "input", "shape": [2, 1, 28, 40], "datatype": "UINT8", "data": pixels.ravel().tolist()}
        body = {"inputs": [tensor], "outputs": [{"name": "logits"}]}
        response = httpx.post(f"{process.url}/v2/models/{MODEL}/infer", json=body)
        assert response.status_code == 200, response.text
        expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": pixels})[0]
        np.testing.assert_allclose(np.asarray(response.json()["outputs"][0]["data"]).reshape(2, -1), expected,
                                   rtol=1e-5, atol=1e-6)
        wrong = httpx.post(f"{process.url}/v2/models/{MODEL}/infer", json={"inputs": [{**tensor, "datatype": "FP32"}]})
        assert wrong.status_code == 400 and "must be UINT8" in wrong.json()["error"]
        huge = {"name": "input", "shape": [1, 1, 100, 100], "datatype": "UINT8", "data": [0] * 10_000}
        too_big = httpx.post(f"{process.url}/v2/models/{MODEL}/infer", json={"inputs": [huge]})
        assert too_big.status_code == 413 and "--max-image-pixels" in too_big.json()["error"]
        assert httpx.post(f"{process.url}{CLASSIFY}", content=encode(Image.new("L", (20, 30)))).status_code == 200
    finally:
        process.stop()


def test_classify_without_a_preprocessing_model_says_to_re_export(model_only: Path) -> None:
    process = Served(model_only).wait_ready()
    try:
        response = httpx.post(f"{process.url}{CLASSIFY}", content=encode(Image.new("L", (32, 32))))
        assert response.status_code == 404 and "--with-preprocessing" in response.json()["error"]
    finally:
        process.stop()


def test_a_failing_model_answers_500_without_internal_text(tmp_path: Path) -> None:
    process = Served(failing_model(tmp_path / "model.onnx")).wait_ready()
    try:
        tensor = {"name": "input", "shape": [2, 1, 2, 2], "datatype": "FP32", "data": [0.0] * 8}
        response = httpx.post(f"{process.url}/v2/models/fails/infer", json={"inputs": [tensor]})
        assert response.status_code == 500
        assert response.json() == {"error": "inference failed; see the server log"}
        one = {**tensor, "shape": [1, 1, 2, 2], "data": [0.0] * 4}
        ok = httpx.post(f"{process.url}/v2/models/fails/infer", json={"inputs": [one]})
        assert ok.status_code == 200, ok.text  # the batcher went on
    finally:
        process.stop()
    assert "Reshape" in process.output()  # the reason is in the server's log, not the response


def test_a_full_queue_answers_503_with_retry_after_and_a_slow_request_504(tmp_path: Path) -> None:
    # A model that never finishes holds the one worker for good: of three concurrent requests one is (or
    # waits) there, and a one-image queue has no room for all of them, in whatever order they arrive. No
    # assumption that one run is slower than parsing the next request.
    process = Served(endless_model(tmp_path / "model.onnx"), "--max-batch-size", "1", "--max-queue-size", "1",
                     "--timeout-ms", "2000", "--threads", "1").wait_ready()
    try:
        body = {"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [0.0] * 4}]}
        with ThreadPoolExecutor(max_workers=3) as pool:
            responses = list(pool.map(lambda _: httpx.post(f"{process.url}/v2/models/endless/infer", json=body,
                                                           timeout=60), range(3)))
    finally:
        process.process.kill()  # SIGTERM would drain, and the endless run never drains
        process.process.wait(timeout=30)
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {503, 504}, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["error"]
    late = next(r for r in responses if r.status_code == 504)
    assert "timed out after 2000 ms" in late.json()["error"]


def test_the_serving_process_has_no_torch(server: Served) -> None:
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "onnxruntime" in maps  # the check can see the libraries the process loaded
    assert "libtorch" not in maps and "/torch/" not in maps


def test_missing_precision_variant_is_a_one_line_error(served_folder: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "vggexport", "serve", "--artifacts", str(served_folder.parent),
                           "--precision", "int8", "--grpc-port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "model.int8.onnx" in done.stderr and "Traceback" not in done.stderr


def test_return_input_from_a_graph_without_the_view_output_says_to_re_export(served_folder: Path,
                                                                             tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(served_folder / "model.preprocessing.onnx"))
    assert [o.name for o in proto.graph.output] == ["logits", "input_image"]
    del proto.graph.output[1]  # as exported before the view output existed
    folder = tmp_path / "vgg11_bn"
    folder.mkdir()
    onnx.save(proto, str(folder / "model.preprocessing.onnx"))
    process = Served(folder / "model.preprocessing.onnx").wait_ready()
    try:
        image = encode(Image.new("L", (32, 32)))
        refused = httpx.post(f"{process.url}{CLASSIFY}?return_input=true", content=image)
        assert refused.status_code == 400 and "re-export" in refused.json()["error"]
        assert httpx.post(f"{process.url}{CLASSIFY}", content=image).status_code == 200
    finally:
        process.stop()
