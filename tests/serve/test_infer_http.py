"""The infer endpoint ahead of FastAPI: it takes exactly the paths the declared routes match, answers as they do
when FastAPI routes the request (behind a root path), and says nothing, counting no failure, to a client that
left before its request was read."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.routing import Match, Route

from tests.serve.conftest import Served
from vggexport.serve.infer_http import infer_path
from vggexport.serve.smoke import free_port

MODEL = "vgg11_bn"
PATHS = ["/v2/models/vgg11_bn/infer", "/v2/models/vgg11_bn/versions/1/infer", "/v2/models/x/versions/99/infer",
         "/v2/models/infer", "/v2/models//infer", "/v2/models/a/b/infer", "/v2/models/a/versions//infer",
         "/v2/models/a/versions/1/2/infer", "/v2/models/a/version/1/infer", "/v2/models/a/infer/",
         "/v2/models/a/inferx", "/v2/models/a b/infer", "/v2/models/é/versions/ü/infer", "/v2/models/a/ready",
         "/v2/model/a/infer", "/v2/models/a/versions/1/ready", "/infer"]


@pytest.mark.parametrize("path", PATHS)
def test_the_endpoint_takes_exactly_the_paths_the_routes_match(path: str) -> None:
    async def endpoint() -> None:
        pass

    routes = [Route("/v2/models/{name}/infer", endpoint, methods=["POST"]),
              Route("/v2/models/{name}/versions/{version}/infer", endpoint, methods=["POST"])]
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    matched = [child["path_params"] for route in routes for match, child in [route.matches(scope)]
               if match is Match.FULL]
    expected = (matched[0]["name"], matched[0].get("version")) if matched else None
    assert infer_path(path) == expected


def binary_body(seed: int = 0) -> tuple[bytes, dict[str, str]]:
    image = np.random.default_rng(seed).standard_normal((1, 1, 32, 32), dtype=np.float32)
    header = json.dumps({"id": "é-1", "inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32",
                                                  "parameters": {"binary_data_size": image.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}},
                                     {"name": "probabilities", "parameters": {"classification": 3}}]}).encode()
    return header + image.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


@pytest.fixture(scope="module")
def behind_root_path(served_folder: Path) -> Iterator[str]:
    """The same app under uvicorn with a root path, where FastAPI's router, not the endpoint, takes infer."""
    import uvicorn

    from vggexport.serve.app import create_app
    from vggexport.serve.service import ServeConfig

    app = create_app(ServeConfig(model=str(served_folder / "model.onnx"), provider="cpu", gate="off",
                                 max_body_bytes=2**20))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", root_path="/base"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


CASES = [("binary", "/v2/models/vgg11_bn/infer", binary_body()),
         ("version 1", "/v2/models/vgg11_bn/versions/1/infer", binary_body(1)),
         ("json", "/v2/models/vgg11_bn/infer", (json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 32, 32],
                                                                       "datatype": "FP32", "data": [0.5] * 1024}]}
                                                           ).encode(), {})),
         ("bad request", "/v2/models/vgg11_bn/infer", (b'{"inputs": []}', {})),
         ("unknown model", "/v2/models/resnet/infer", (b"{}", {})),
         ("too large", "/v2/models/vgg11_bn/infer", (b" " * (2**20 + 1), {}))]


@pytest.mark.parametrize(("case", "path", "request_"), CASES, ids=[c[0] for c in CASES])
def test_fastapis_route_answers_as_the_endpoint_does(server: Served, behind_root_path: str, case: str, path: str,
                                                     request_: tuple[bytes, dict[str, str]]) -> None:
    body, headers = request_
    direct = httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=30)
    routed = httpx.post(f"{behind_root_path}{path}", content=body, headers=headers, timeout=30)
    assert (routed.status_code, routed.content) == (direct.status_code, direct.content), case
    for name in ("content-type", "content-length", "inference-header-content-length", "retry-after"):
        assert routed.headers.get(name) == direct.headers.get(name), (case, name)


def failures(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("nv_inference_request_failure_total{"))


def test_a_client_that_leaves_mid_body_gets_no_answer_and_counts_no_failure(server: Served) -> None:
    before = failures(server.url)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v2/models/vgg11_bn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"in")
        time.sleep(0.2)  # the endpoint is now waiting for the rest of the body
    time.sleep(0.3)
    assert failures(server.url) == before
    body, headers = binary_body()
    assert httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body, headers=headers).status_code == 200
