"""What the OpenAPI document (``/openapi.json``) declares: every status each route answers, with its body.

The models here only describe answers; the routes never validate or serialize through them, so they cost
the hot path nothing. Every error is ``{"error": "..."}`` (``infer_http.error``); 503 from inference carries
``Retry-After``, every 405 ``Allow``. FastAPI's own 422 is dropped: this server answers invalid parameters
with 400. ``tests/serve/test_openapi_conformance.py`` holds the server to this document with Schemathesis.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from vggexport.serve.protocol import HEADER_LENGTH
from vggexport.serve.request_schema import InferenceRequest


class ErrorBody(BaseModel):
    error: str


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None  # left out when the output is binary
    parameters: dict[str, Any] | None = None  # binary_data_size, for a binary output


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None  # the request's, echoed; left out when it had none
    outputs: list[ResponseOutput]


class Prediction(BaseModel):
    index: int
    label: str
    probability: float


class Classification(BaseModel):
    model_name: str
    predictions: list[Prediction]
    input_image: str | None = None  # a PNG data URL, with ?return_input=true


def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description, **({"headers": headers} if headers else {})}


REF = "#/components/schemas/{model}"
BINARY = {"schema": {"type": "string", "format": "binary"}}
ALLOW = {"Allow": {"description": "the methods this path answers (RFC 9110)", "required": True,
                   "schema": {"type": "string"}}}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                               "schema": {"type": "integer"}}}
EVERY_ROUTE: dict[int | str, dict[str, Any]] = {
    405: error("method not allowed on this path", ALLOW),
    500: error("a server fault; the details go to the server's log, never the client"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error("unknown model or version")}
READY: dict[int | str, dict[str, Any]] = {200: {"model": Ready},
                                          503: {"model": Ready, "description": "not ready (also while draining)"}}
MODEL_READY: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelReady}, 503: {"model": ModelReady, "description": "not ready (also while draining)"},
    **NOT_FOUND}
INFERENCE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error("malformed request"),
    404: error("unknown model or version (for /classify also: no preprocessing model beside the model)"),
    413: error("request too large"),
    503: error("not ready, draining, or the queue is full", RETRY_AFTER),
    504: error("the request waited longer than --timeout-ms"),
}
INFER: dict[int | str, dict[str, Any]] = {
    200: {"model": InferenceResponse, "content": {"application/octet-stream": BINARY},
          "description": f"the outputs: JSON, or with binary outputs the JSON header and then the outputs' bytes "
                        f"({HEADER_LENGTH} gives the header's length)",
          "headers": {HEADER_LENGTH: {"description": "the JSON header's length in bytes, when outputs are binary",
                                      "schema": {"type": "integer", "minimum": 1}}}},
    **INFERENCE_ERRORS}
INFER_REQUEST: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(
        model="InferenceRequest")}}, "application/octet-stream": BINARY}},
    "parameters": [{"name": HEADER_LENGTH, "in": "header", "required": False,
                    "description": "the binary tensor extension: the JSON header's length in bytes; the tensors' "
                                   "bytes follow it", "schema": {"type": "integer", "minimum": 1}}],
}
CLASSIFY: dict[int | str, dict[str, Any]] = {200: {"model": Classification}, **INFERENCE_ERRORS}
CLASSIFY_REQUEST: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/octet-stream": BINARY,
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}}}}}
METRICS: dict[int | str, dict[str, Any]] = {200: {"description": "Prometheus' text exposition format",
                                                  "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}}


def install_openapi(app: FastAPI) -> None:
    """Build the document once, as FastAPI would, then add what route decorators cannot say."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path in document["paths"].values():
                for operation in path.values():
                    operation["responses"].pop("422", None)  # invalid parameters are 400 here
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            request = InferenceRequest.model_json_schema(ref_template=REF)
            schemas.update(request.pop("$defs", {}), InferenceRequest=request)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
