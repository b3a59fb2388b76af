"""The server's own responses: one error shape per route family (OpenAI's JSON error under /v1/, a plain-text
line for WAGI paths), and the error for a guest that ended before writing a response."""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from kwasi_runtime.sandbox import RunResult
from kwasi_runtime.serve import openai

Flavour = Literal["wagi", "openai"]


def error_response(flavour: Flavour, status: int, message: str, *, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    if flavour == "wagi":
        return web.Response(status=status, text=message + "\n", headers=headers)
    # OpenAI's types: the client's fault for 4xx, the server's for 5xx and for being too busy.
    kind = "server_error" if status >= 500 or status == 429 else "invalid_request_error"
    if status == 401:
        kind = "authentication_error"
    return web.Response(status=status, body=openai.error_body(message, kind, param, code),
                        content_type="application/json", headers=headers)


def guest_failure(result: RunResult, has_output: bool, flavour: Flavour) -> web.Response | None:
    """The error response for a guest that ended before starting one; None when its output stands."""
    if result.exit_code == 0 or (result.exit_code is not None and has_output):
        return None  # a guest that wrote a response and exited non-zero chose its status itself
    if result.timed_out:
        status, message = 504, f"the guest exceeded its deadline: {result.trap}"
    elif result.trap is not None:
        status, message = 500, f"the guest trapped: {result.trap}"
    else:
        status, message = 500, f"the guest exited with code {result.exit_code} before writing a response"
    return error_response(flavour, status, message)
