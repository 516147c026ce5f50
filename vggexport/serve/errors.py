"""Serving errors: each carries the HTTP status it answers with (gRPC maps it to a status code)."""

from __future__ import annotations

from vggexport.errors import VggExportError


class ProtocolError(VggExportError):
    """A malformed or unsupported request."""

    http_status = 400


class NotFoundError(VggExportError):
    http_status = 404


class PayloadTooLargeError(VggExportError):
    http_status = 413


class UnavailableError(VggExportError):
    """Not ready, draining, or the queue is full: try again later (503 with Retry-After)."""

    http_status = 503
    retry_after_s = 1


class DeadlineError(VggExportError):
    """The request waited longer than --timeout-ms."""

    http_status = 504


class InternalError(VggExportError):
    """A server-side failure; its text is generic, the details go to the server's log."""

    http_status = 500
