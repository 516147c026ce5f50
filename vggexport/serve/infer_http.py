"""``POST /v2/models/{name}[/versions/{version}]/infer`` as a bare ASGI handler, ahead of FastAPI.

Profiled under 64 single-image clients, FastAPI's middleware stack, router and per-route parameter solving
took about as much of the event loop as everything else a request costs on it together. So ``ServingApp``
gives these two paths (POST only) to ``InferEndpoint`` before the framework sees them; every other request,
and every other method on these paths (405 with ``Allow``), goes through FastAPI as before. The routes stay
declared in ``http_api`` (the OpenAPI document describes them) and answer through this same endpoint, so the
document and the answers cannot drift apart. Refusals are the JSON errors every route gives (``refused``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from vggexport.errors import VggExportError
from vggexport.serve.dataplane import INLINE_BYTES, INLINE_VALUES, DataPlane
from vggexport.serve.errors import PayloadTooLargeError, UnavailableError
from vggexport.serve.metrics import ServerMetrics
from vggexport.serve.protocol import HEADER_LENGTH, encode_response, parse_request

log = logging.getLogger("vggexport.serve")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body
PREFIX, SUFFIX = "/v2/models/", "/infer"
HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode("latin-1")  # ASGI servers give header names in lower case
JSON_TYPE, BINARY_TYPE = (b"content-type", b"application/json"), (b"content-type", b"application/octet-stream")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def refused(exc: Exception, metrics: ServerMetrics, model: str) -> JSONResponse:
    """The JSON error every route answers with, counted in the failure metric (client or server)."""
    if isinstance(exc, VggExportError):
        metrics.failure.labels(model, "client" if exc.http_status < 500 else "server").inc()
        retry = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, UnavailableError) else None
        return error(exc.http_status, str(exc), retry)
    log.error("unhandled error", exc_info=exc)  # the details stay in the server's log
    metrics.failure.labels(model, "server").inc()
    return error(500, "internal server error; see the server log")


def infer_path(path: str) -> tuple[str, str | None] | None:
    """(name, version) when ``path`` is one of the two infer routes, matched as Starlette matches them
    (``{name}`` and ``{version}``: one non-empty path segment each); else None."""
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    parts = path[len(PREFIX) : -len(SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def request_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(Content-Length, Inference-Header-Content-Length), each the first given, as Starlette's Headers.get."""
    declared = header_length = None
    for key, value in headers:
        if key == b"content-length" and declared is None:
            declared = value.decode("latin-1")
        elif key == HEADER_LENGTH_KEY and header_length is None:
            header_length = value.decode("latin-1")
    return declared, header_length


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or counted); ClientDisconnect when the
    client goes away first."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferEndpoint:
    def __init__(self, plane: DataPlane, metrics: ServerMetrics) -> None:
        self.plane, self.metrics = plane, metrics
        self.model_name = plane.service.name
        # The metrics' children for the served model, looked up once (labels() takes a lock and a dict lookup).
        self.success = metrics.success.labels(self.model_name)
        self.latency = metrics.request_latency.labels("infer")

    async def __call__(self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        answer = await self.answer(scope["headers"], receive, name, version)
        if answer is None:
            return  # the client left before its request was read: there is no one to answer
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def respond(self, scope: Scope, receive: Receive, name: str, version: str | None) -> Response:
        """The same answer as a Starlette response, for the declared FastAPI routes."""
        status, headers, body = await self.answer(scope["headers"], receive, name, version) or (499, [], b"")
        response = Response(body, status_code=status)
        response.raw_headers = headers
        return response

    async def answer(self, headers: list[tuple[bytes, bytes]], receive: Receive, name: str,
                     version: str | None) -> Answer | None:
        started = time.perf_counter()
        try:
            payload, header_length = await self.infer(headers, receive, name, version)
        except ClientDisconnect:
            return None
        except Exception as exc:
            response = refused(exc, self.metrics, self.model_name)
            return response.status_code, response.raw_headers, bytes(response.body)
        self.success.inc()
        self.latency.observe(time.perf_counter() - started)
        size = (b"content-length", b"%d" % len(payload))
        if header_length is None:
            return 200, [size, JSON_TYPE], payload
        return 200, [(HEADER_LENGTH_KEY, b"%d" % header_length), size, BINARY_TYPE], payload

    async def infer(self, headers: list[tuple[bytes, bytes]], receive: Receive, name: str,
                    version: str | None) -> tuple[bytes, int | None]:
        plane = self.plane
        model = plane.model(name, version)  # 404 before reading a body meant for another model
        declared, header_length = request_headers(headers)
        body = await read_body(receive, declared, model.config.max_body_bytes)
        call = await plane.offload_if(len(body) > INLINE_BYTES, parse_request, body, header_length, name, version)
        result = await plane.infer(call)
        return await plane.offload_if(result.json_values() > INLINE_VALUES, encode_response, result)


class ServingApp(FastAPI):
    """FastAPI, with the infer paths answered by ``InferEndpoint`` before its middleware and router."""

    endpoint: InferEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.endpoint is not None \
                and not self.root_path and not scope.get("root_path"):
            found = infer_path(scope["path"])
            if found is not None:
                await self.endpoint(scope, receive, send, *found)
                return
        await super().__call__(scope, receive, send)  # type: ignore[arg-type]
