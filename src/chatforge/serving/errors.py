"""The one error shape of the service: OpenAI's {"error": {"message", "type", "code", "param"}}.

`param` always names a public request field as a client wrote it (`messages.1.content`,
`max_completion_tokens`), never a byte offset or an internal type tag; None when no single field
is at fault (a body that is not JSON, a missing key).
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error a client caused (4xx) or must be told about (5xx), raised anywhere in the service."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


__all__ = ["APIError", "error_body"]
