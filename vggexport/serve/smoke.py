"""One real request against a short-lived server on 127.0.0.1 (the pipeline's --no-serve ending)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from vggexport.errors import VggExportError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smoke_request(model: Path, *, provider: str = "auto", timeout: float = 30.0) -> tuple[str, dict[str, Any]]:
    import uvicorn

    from vggexport.serve.app import create_app
    from vggexport.serve.service import ServeConfig

    app = create_app(ServeConfig(model=str(model), provider=provider, gate="refuse"))
    service = app.state.service
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise VggExportError("the smoke-test server did not start")
            time.sleep(0.05)
        side = int(service.engine.runner.metadata.get("image_size", "32"))
        shape = [1, *(side if d == -1 else d for d in service.input_shape[1:])]
        body = json.dumps({"inputs": [{"name": service.input_name, "shape": shape, "datatype": service.input_datatype,
                                       "data": [0] * int(np.prod(shape))}], "outputs": [{"name": "probabilities"}]})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{service.name}/infer",
                                         data=body.encode(), headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            probabilities = np.asarray(json.loads(response.read())["outputs"][0]["data"])
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
    best = int(probabilities.argmax())
    return service.name, {"index": best, "label": service.class_names[best], "probability": float(probabilities[best])}
