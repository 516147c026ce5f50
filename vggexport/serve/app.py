"""The ASGI app: ``create_app`` builds it; endpoints only translate HTTP to service calls."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from starlette.exceptions import HTTPException

from vggexport import __version__
from vggexport.errors import VggExportError
from vggexport.serve.metrics import ServerMetrics, create_metrics
from vggexport.serve.protocol import HEADER_LENGTH, InferenceRequest, ProtocolError, encode_response, parse_request
from vggexport.serve.service import INPUT, OUTPUT, PROBABILITIES, ModelService, ServeConfig, softmax

log = logging.getLogger("vggexport.serve")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise VggExportError(f"request body of {declared} bytes exceeds the {limit}-byte limit", http_status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise VggExportError(f"request body exceeds the {limit}-byte limit", http_status=413)
        chunks.append(chunk)
    return b"".join(chunks)


router = APIRouter()


def served(request: Request, name: str) -> ModelService:
    service: ModelService = request.app.state.service
    if name != service.name:
        raise VggExportError(f"unknown model {name!r}; this server serves {service.name!r}", http_status=404)
    return service


def observe_success(request: Request, model: ModelService, endpoint: str, started: float) -> None:
    metrics: ServerMetrics = request.app.state.metrics
    metrics.success.labels(model.name).inc()
    metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    return {"ready": request.app.state.service.runner.is_active}


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "vggexport", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(name: str, request: Request, version: str = "1") -> dict[str, Any]:
    return served(request, name).metadata().model_dump()


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(name: str, request: Request, version: str = "1") -> dict[str, Any]:
    model = served(request, name)
    return {"name": model.name, "ready": model.runner.is_active}


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(name: str, request: Request, version: str = "1") -> Response:
    started = time.perf_counter()
    model = served(request, name)
    body = await read_body(request, model.config.max_body_bytes)
    parsed, tensors = parse_request(body, request.headers.get(HEADER_LENGTH))
    wanted = requested_outputs(parsed)
    if len(tensors) != 1:
        raise ProtocolError(f"expected exactly one input ({INPUT!r}), got {len(tensors)}")
    ((input_name, array),) = tensors.items()
    logits = await model.infer(model.check_input(input_name, array))
    outputs = {n: logits if n == OUTPUT else softmax(logits) for n in wanted}
    payload, header_length = encode_response(model.name, parsed, outputs)
    observe_success(request, model, "infer", started)
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


def requested_outputs(parsed: InferenceRequest) -> list[str]:
    wanted = [o.name for o in parsed.outputs] if parsed.outputs else [OUTPUT]
    unknown = [n for n in wanted if n not in (OUTPUT, PROBABILITIES)]
    if unknown:
        raise ProtocolError(f"unknown output {unknown[0]!r}: choose {OUTPUT!r} or {PROBABILITIES!r}")
    return wanted


@router.post("/v2/models/{name}/classify")
async def classify(name: str, request: Request, top_k: int = 3) -> dict[str, Any]:
    """A PNG or JPEG (raw body, or multipart field ``file``) in; top-k labels with probabilities out."""
    started = time.perf_counter()
    model = served(request, name)
    raw = await read_body(request, model.config.max_body_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raw = await image_from_multipart(request, raw)
    logits = await model.infer(model.decode_image(raw))
    observe_success(request, model, "classify", started)
    return {"model_name": model.name, "predictions": model.top_k(logits, top_k)[0]}


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # --workers N: every worker's counts, summed
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_app(config: ServeConfig) -> FastAPI:
    metrics = create_metrics()
    service = ModelService(config, metrics)
    log.info("serving %s from %s on %s", service.name, config.model, service.runner.provider)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="vggexport", version=__version__, lifespan=lifespan)
    app.state.service, app.state.metrics = service, metrics
    app.include_router(router)
    from vggexport.serve.page import install_page; install_page(app)  # noqa: E702  GET /, offline /docs

    @app.exception_handler(VggExportError)
    async def user_error(_: Request, exc: VggExportError) -> JSONResponse:
        metrics.failure.labels(service.name, "client" if exc.http_status < 500 else "server").inc()
        return error(exc.http_status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        return error(422, f"invalid request: {first.get('msg')}")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    return app


async def image_from_multipart(request: Request, raw: bytes) -> bytes:
    from starlette.datastructures import UploadFile
    from starlette.requests import Request as StarletteRequest

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, replay).form()
    except Exception:  # python-multipart raises several types for broken forms
        raise ProtocolError("malformed multipart body") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ProtocolError("multipart body needs an image in the field 'file'")
    return await upload.read()



CONFIG_ENV = "VGGEXPORT_SERVE_CONFIG"


def app_from_environment() -> FastAPI:
    """The app factory each worker process calls (``--workers N``): its config comes from the parent."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def serve_forever(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run under uvicorn until SIGINT/SIGTERM (which drain in-flight requests).

    With ``config.workers > 1`` uvicorn runs that many processes on one port, each with its own
    ONNX Runtime session; prometheus-client's multiprocess mode sums their metrics in /metrics.
    """
    import uvicorn

    app = create_app(config)  # also validates the model and provider before any worker starts
    service: ModelService = app.state.service
    print(f"serving {service.name} on http://{host}:{port}/v2/models/{service.name} "
          f"({service.runner.provider}, max batch {config.max_batch_size}, {config.workers} worker(s))", flush=True)
    if config.workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
        return
    service.runner.deactivate()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vggexport-metrics-")
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    try:
        uvicorn.run("vggexport.serve.app:app_from_environment", factory=True, workers=config.workers, host=host,
                    port=port, log_level="warning", timeout_graceful_shutdown=30)
    finally:
        shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
