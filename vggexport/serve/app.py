"""The server factory: ``create_app`` builds the ASGI app (HTTP) and, in its lifespan, the gRPC server.

Both transports share one ``DataPlane`` over one ``ModelService`` and its batchers.
The process imports onnxruntime, numpy, PIL and the web stack, never torch.
Start-up logs each phase with its time; on SIGTERM the server turns not-ready
at once (503 on /v2/health/ready, ServerReady false on gRPC), refuses new work
with 503 and keeps its ports open until the requests in flight are answered.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vggexport import __version__
from vggexport.errors import VggExportError, first_line
from vggexport.backend.onnxrt import Phases
from vggexport.serve.dataplane import DataPlane
from vggexport.serve.http_api import router
from vggexport.serve.infer_http import InferEndpoint, ServingApp, error, refused
from vggexport.serve.metrics import create_metrics
from vggexport.serve.openapi import install_openapi
from vggexport.serve.page import install_page
from vggexport.serve.service import ModelService, ServeConfig

log = logging.getLogger("vggexport.serve")
CONFIG_ENV = "VGGEXPORT_SERVE_CONFIG"
FAILED_ENV = "VGGEXPORT_SERVE_FAILED"  # a file the workers' refusals are written to, for the parent to say
STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: its supervisor stops rather than restart the worker
GRPC_GRACE_S = 30.0  # also the longest a drain waits for requests in flight


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: no gRPC
    # The process is the server's own (`vggexport serve` and its workers): its start-up objects may be frozen out
    # of the garbage collector's reach. Off for an app built in code, whose process is someone else's.
    own_process: bool = False


def install_drain_hook(plane: DataPlane, grace_s: float) -> None:
    """On SIGTERM/SIGINT drain as Triton does: turn not-ready at once (HTTP 503, gRPC false) and refuse
    new inference with 503, but keep both ports open until the requests in flight have their answers
    (at most ``grace_s``); then hand the signal to uvicorn, which shuts down. A second signal stops at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # an embedded server (the pipeline's smoke test) has no signals of its own
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Callable[..., Any] = previous) -> None:
            if plane.draining:
                previous(signum, frame)
                return
            plane.draining = True
            log.info("shutting down: not ready, draining %d in-flight request(s)", plane.in_flight)
            stop = lambda: previous(signum, frame)
            loop.call_soon_threadsafe(lambda: loop.create_task(finish_drain(plane, stop, grace_s)))

        signal.signal(sig, handler)


async def finish_drain(plane: DataPlane, stop: Callable[[], None], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while plane.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stop()


def add_error_handlers(app: FastAPI, plane: DataPlane) -> None:
    metrics = app.state.metrics

    @app.exception_handler(VggExportError)
    async def user_error(_: Request, exc: VggExportError) -> JSONResponse:
        return refused(exc, metrics, plane.service.name)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return error(400, f"invalid request at {where}: {first.get('msg')}")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), exc.headers)  # 405 keeps its Allow (RFC 9110)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        return refused(exc, metrics, plane.service.name)


def freeze_start_up_objects() -> None:
    """Take what start-up made (modules, the app, the sessions: some 70,000 objects) out of the cyclic garbage
    collector's reach. A full collection walks every tracked object: 42-54 ms for these under load on a 2-core
    machine, which every request in flight waits out, and the survivors of the young collections made two due in
    every 6 s at 64 clients (BENCHMARKS.md). Frozen, they are never walked again (``gc.freeze``, as long-running
    Python servers do), and those collections took about a millisecond."""
    gc.collect()
    gc.freeze()


def create_app(config: ServeConfig, listen: Listen | None = None,
               phase: Callable[[str], None] | None = None) -> FastAPI:
    listen = listen or Listen()
    phase = phase or Phases()
    metrics = create_metrics()
    service = ModelService(config, metrics, phase)
    plane = DataPlane(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        try:  # a start that fails (gRPC's port taken, say) stops what warm-up started, as a shutdown does
            if listen.grpc_port:
                from vggexport.serve.grpc_server import start_grpc

                grpc_server = await start_grpc(plane, metrics, listen.host, listen.grpc_port,
                                               config.max_body_bytes, shared_port=config.workers > 1)
                phase(f"gRPC listening on {listen.host}:{listen.grpc_port}")
            await service.start()
            install_drain_hook(plane, GRPC_GRACE_S)
            if listen.own_process:
                freeze_start_up_objects()
            phase("ready")
            yield
        finally:  # each step runs even if the one before it raised
            plane.draining = True
            try:
                if grpc_server is not None:
                    await grpc_server.stop(GRPC_GRACE_S)
            finally:
                try:
                    await service.stop()
                finally:
                    plane.close()

    app = ServingApp(title="vggexport", version=__version__, lifespan=lifespan)
    app.endpoint = InferEndpoint(plane, metrics)
    app.state.service, app.state.plane, app.state.metrics, app.state.infer = service, plane, metrics, app.endpoint
    app.include_router(router)
    install_page(app)  # GET /: the try-it page; /docs and /redoc served offline
    add_error_handlers(app, plane)
    install_openapi(app)
    return app


def check_ports_free(host: str, *ports: int) -> None:
    """A port in use is a one-line error before anything starts, not a traceback from inside uvicorn."""
    for port in ports:
        if not port:
            continue
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as exc:
            raise VggExportError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another "
                                 "--port / --grpc-port (--grpc-port 0 turns gRPC off)") from None


def app_from_environment() -> FastAPI:
    """The app factory each worker process calls (``--workers N``): its config comes from the parent.

    A refusal here (the model.sig a worker read is not the one the parent checked) is one line and uvicorn's
    startup-failure exit code, on which its supervisor stops instead of restarting the worker forever; the
    parent, told through FAILED_ENV's file, exits non-zero with that line.
    """
    saved = json.loads(os.environ[CONFIG_ENV])
    try:
        return create_app(ServeConfig(**saved["config"]), Listen(**saved["listen"]))
    except VggExportError as exc:
        report = os.environ.get(FAILED_ENV)
        if report:  # the parent says it; two workers failing alike would otherwise print it twice
            with open(report, "a", encoding="utf-8") as handle:
                handle.write(f"{first_line(exc, 400)}\n")
        else:
            print(f"error: {first_line(exc, 400)}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)


def worker_failure(report: str) -> str | None:
    """The first refusal a worker wrote to ``report``, or None when every worker started."""
    try:
        lines = Path(report).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return lines[0] if lines else None


def serve_forever(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, grpc_port: int = 0) -> None:
    """Run under uvicorn until SIGINT/SIGTERM (which drain in-flight requests).

    With ``config.workers > 1`` uvicorn runs that many processes on one port, each with its own
    ONNX Runtime session (gRPC shares its port the same way, by SO_REUSEPORT); prometheus-client's
    multiprocess mode sums their metrics in /metrics.
    """
    import uvicorn

    phase = Phases(lambda message: print(message, flush=True))
    check_ports_free(host, port, grpc_port)
    listen = Listen(host=host, grpc_port=grpc_port, own_process=True)
    app = create_app(config, listen, phase)  # also validates the model and provider before any worker starts
    service: ModelService = app.state.service
    grpc_note = f", gRPC on {host}:{grpc_port}" if grpc_port else ""
    phase(f"serving {service.name} on http://{host}:{port}/v2/models/{service.name}{grpc_note} "
          f"({service.provider}, max batch {config.max_batch_size}, {config.workers} worker(s), "
          f"{config.instances} instance(s) of {service.engines[0].threads} thread(s))")
    # access_log off: at log level warning its INFO lines were never shown, yet uvicorn built each one's
    # arguments (client address, quoted path) for every response.
    quiet = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 30}
    if config.workers == 1:
        uvicorn.run(app, host=host, port=port, **quiet)
        return
    for engine in service.engines:  # the parent only supervises: its session (GPU memory, on CUDA) and threads go
        engine.close()
    scratch = tempfile.mkdtemp(prefix="vggexport-serve-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(scratch, "metrics")
    os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    os.environ[FAILED_ENV] = os.path.join(scratch, "failed")
    os.environ[CONFIG_ENV] = json.dumps({"config": asdict(config), "listen": asdict(listen)})
    try:
        uvicorn.run("vggexport.serve.app:app_from_environment", factory=True, workers=config.workers, host=host,
                    port=port, **quiet)
        failure = worker_failure(os.environ[FAILED_ENV])
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR")
        os.environ.pop(FAILED_ENV)
        shutil.rmtree(scratch, ignore_errors=True)
    if failure:
        raise VggExportError(f"a worker refused to start: {failure}")
