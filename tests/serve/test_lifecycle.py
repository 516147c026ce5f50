"""A real `vggexport serve` process starting and stopping: a start that cannot serve fails in one line (and
stops what it started), SIGTERM drains in-flight requests, --workers share one port and sum their metrics."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from vggexport.backend.onnxrt import default_threads
from tests.serve_process import ServerProcess
from tests.serve.conftest import INFER, MODEL, Served, inputs


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



def test_start_up_leaves_its_objects_frozen_out_of_the_collectors_reach(served_folder: Path) -> None:
    """A full collection under load walked some 70,000 start-up objects, 40-50 ms in which every request in flight
    waited (BENCHMARKS.md): in its own process (`vggexport serve`) the lifespan's start freezes them
    (``gc.freeze``) before it says ready; an app built in code leaves its host process's collector alone."""
    import asyncio
    import gc

    from vggexport.serve.app import Listen, create_app
    from vggexport.serve.service import ServeConfig

    config = ServeConfig(model=str(served_folder / "model.onnx"), provider="cpu", gate="off")

    def frozen_while_serving(listen: Listen) -> int:
        app = create_app(config, listen, phase=lambda line: None)
        frozen: list[int] = []

        async def start() -> None:
            async with app.router.lifespan_context(app):
                frozen.append(gc.get_freeze_count())

        gc.unfreeze()  # whatever another test left frozen in this process
        try:
            asyncio.run(start())
        finally:
            gc.unfreeze()  # the test process's own objects stay collectable
        return frozen[0]

    assert frozen_while_serving(Listen(own_process=True)) > 10_000
    assert frozen_while_serving(Listen()) == 0
