"""KServe v2 over HTTP: thin FastAPI endpoints that translate to and from the data plane.

Readiness is the status code (200 ready, 503 not), as Triton and Kubernetes probes expect.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from vggexport.serve.dataplane import DataPlane
from vggexport.serve.errors import ProtocolError
from vggexport.serve.infer_http import InferEndpoint, read_body
from vggexport.serve.metrics import ServerMetrics
from vggexport.serve.model_config import config_json
from vggexport.serve.openapi import (CLASSIFY, CLASSIFY_REQUEST, EVERY_ROUTE, INFER, INFER_REQUEST, METRICS,
                                     MODEL_READY, NOT_FOUND, READY, Live, ModelMetadata, ServerMetadata)

router = APIRouter(responses=EVERY_ROUTE)  # every status a route answers is in the OpenAPI document


def plane(request: Request) -> DataPlane:
    return request.app.state.plane


def status(ok: bool, body: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(body or {}, status_code=200 if ok else 503)


def observe_success(request: Request, model: str, endpoint: str, started: float) -> None:
    metrics: ServerMetrics = request.app.state.metrics
    metrics.success.labels(model).inc()
    metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)


@router.get("/v2/health/live", responses={200: {"model": Live}})
async def live(request: Request) -> JSONResponse:
    return status(plane(request).live(), {"live": plane(request).live()})


@router.get("/v2/health/ready", responses=READY)
async def ready(request: Request) -> JSONResponse:
    return status(plane(request).ready(), {"ready": plane(request).ready()})


@router.get("/v2", responses={200: {"model": ServerMetadata}})
async def server_metadata(request: Request) -> dict[str, Any]:
    return plane(request).server_metadata()


METADATA = {200: {"model": ModelMetadata}, **NOT_FOUND}


@router.get("/v2/models/{name}", responses=METADATA)
@router.get("/v2/models/{name}/versions/{version}", responses=METADATA)
async def model_metadata(name: str, request: Request, version: str | None = None) -> dict[str, Any]:
    return plane(request).model_metadata(name, version)


@router.get("/v2/models/{name}/config", responses=NOT_FOUND)
@router.get("/v2/models/{name}/versions/{version}/config", responses=NOT_FOUND)
async def model_config(name: str, request: Request, version: str | None = None) -> dict[str, Any]:
    """Triton's model configuration extension: the served model's ModelConfig as JSON."""
    return config_json(plane(request).model_config(name, version))


@router.get("/v2/models/{name}/ready", responses=MODEL_READY)
@router.get("/v2/models/{name}/versions/{version}/ready", responses=MODEL_READY)
async def model_ready(name: str, request: Request, version: str | None = None) -> JSONResponse:
    is_ready = plane(request).model_ready(name, version)
    return status(is_ready, {"name": name, "ready": is_ready})


INFER_ROUTE: dict[str, Any] = {"responses": INFER, "openapi_extra": INFER_REQUEST, "response_class": Response}


@router.post("/v2/models/{name}/infer", **INFER_ROUTE)
@router.post("/v2/models/{name}/versions/{version}/infer", **INFER_ROUTE)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    """Answered by ``infer_http.InferEndpoint``, which ``ServingApp`` calls ahead of FastAPI on these paths; the
    route declares them (the OpenAPI document, 405 for other methods) and answers through the same endpoint."""
    endpoint: InferEndpoint = request.app.state.infer
    return await endpoint.respond(request.scope, request.receive, name, version)


@router.post("/v2/models/{name}/classify", responses=CLASSIFY, openapi_extra=CLASSIFY_REQUEST)
async def classify(name: str, request: Request, top_k: int = 3, return_input: bool = False) -> dict[str, Any]:
    """An image (raw body, or multipart field ``file``) in; top-k labels with probabilities out."""
    started = time.perf_counter()
    data = plane(request)
    model = data.model(name, None)
    raw = await read_body(request.receive, request.headers.get("content-length"), model.config.max_body_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raw = await image_from_multipart(request, raw)
    answer = await data.classify_image(name, raw, top_k=top_k, return_input=return_input)
    observe_success(request, model.name, "classify", started)
    return answer


@router.get("/metrics", responses=METRICS, response_class=Response)
async def prometheus(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # --workers N: every worker's counts, summed
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


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
