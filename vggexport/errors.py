"""The one exception type for mistakes a user can fix.

The CLI prints it as a single line and exits with ``exit_code``; the server
answers with ``http_status`` and a JSON body. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class VggExportError(Exception):
    """A user-facing error: bad input, missing file, unsupported option."""

    exit_code: int = 1
    http_status: int = 400

    def __init__(self, message: str, *, exit_code: int | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        if http_status is not None:
            self.http_status = http_status


class DataNotFoundError(VggExportError):
    """The dataset is neither on disk nor downloadable."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters; its type's name when it says nothing.

    The one way a foreign library's multi-line error (ORT, protobuf, PIL, torch) becomes part of our one-line
    messages, so every such message is cut the same way.
    """
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
