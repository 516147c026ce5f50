"""The two HTTP clients the load generator speaks KServe v2 through, and the v2 request they send.

`raw`: one keep-alive HTTP/1.1 connection per client on asyncio streams, each request's bytes
built once. `aiohttp`: a shared aiohttp session. Not httpx: it was measured as the limit (~100
req/s at 64 clients). Stdlib-only at import (aiohttp is imported by its caller), so every
tool's --help stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlsplit


def binary_request(raw: bytes, shape: list[int], *, input_name: str = "input", output_name: str = "logits",
                   datatype: str = "FP32") -> tuple[bytes, dict[str, str]]:
    """One v2 request in the binary tensor extension: JSON header, then the tensor's bytes; the output binary too."""
    header = json.dumps({"inputs": [{"name": input_name, "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


class RawHttp:
    """One keep-alive HTTP/1.1 connection on asyncio streams, each request's bytes built once.

    Measured on 2 busy cores against Triton: about 60 us of client CPU per request at 64
    clients, where aiohttp took about 460 us, so far less of the servers' cores goes to the load.
    It knows just what a v2 answer needs: a status line, Content-Length, keep-alive.
    """

    def __init__(self, url: str, bodies: list[bytes], headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.requests = [f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{fixed}"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, index: int) -> tuple[int, str | None, bytes]:
        """(status, Inference-Header-Content-Length, body); reconnects after an error or a close."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(self.requests[index])
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            if b"content-length" not in fields:
                raise ConnectionError(f"no Content-Length in {head[:200]!r}")
            body = await reader.readexactly(int(fields[b"content-length"]))
        except BaseException:
            await self.close()
            raise
        if fields.get(b"connection", b"").lower() == b"close":
            await self.close()
        size = fields.get(b"inference-header-content-length")
        return int(head[9:12]), None if size is None else size.decode(), body

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


class Aiohttp:
    """The same calls through a shared aiohttp session (the client tools/bench_serve.py has always used)."""

    def __init__(self, session: Any, url: str, bodies: list[bytes], headers: dict[str, str]) -> None:
        self.session, self.url, self.bodies, self.headers = session, url, bodies, headers

    async def post(self, index: int) -> tuple[int, str | None, bytes]:
        async with self.session.post(self.url, data=self.bodies[index], headers=self.headers) as response:
            body = await response.read()
            return response.status, response.headers.get("Inference-Header-Content-Length"), body

    async def close(self) -> None:
        pass


def client_name(client: str) -> str:
    """What drives the load, by name and version (the report prints it beside the numbers)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        loop = f"uvloop {version('uvloop')}"
    except PackageNotFoundError:
        loop = f"asyncio (Python {sys.version.split()[0]})"
    what = "HTTP/1.1 keep-alive on asyncio streams (tools/v2_http.py RawHttp)" if client == "raw" else \
        f"aiohttp {version('aiohttp')}"
    return f"{what} on {loop}"
