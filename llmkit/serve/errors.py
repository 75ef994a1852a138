"""The server's errors: ``ApiError`` (what a route raises for a 4xx or 5xx) and the handlers that answer every
failure (ours, an unexpected exception, no route, a wrong method) in OpenAI's JSON error shape.

Its own module so that every route module can raise ApiError without importing the app that includes them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from llmkit.serve.schemas import error_body


class ApiError(Exception):
    """An answer other than 200: ``status``, the message a client reads, and OpenAI's ``param`` and ``code``."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
    return kinds.get(status, "server_error" if status >= 500 else "invalid_request_error")


def add_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, any unexpected exception (a JSON 500), 404 and 405 with OpenAI's error object."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        body = error_body(err.message, error_type(err.status), err.param, err.code)
        return JSONResponse(body, status_code=err.status, headers=err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        # still logged by uvicorn with its traceback; the client gets JSON, not plain text
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", error_type(500)), status_code=500)

    @app.exception_handler(404)
    async def _not_found(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"no route {request.url.path}", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request: Request, err: Exception) -> JSONResponse:
        message = f"{request.method} is not allowed on {request.url.path}"
        # Allow: the methods the path has (RFC 9110 requires it on a 405; Starlette's exception carries it)
        headers = {k: v for k, v in (getattr(err, "headers", None) or {}).items() if k.lower() == "allow"}
        return JSONResponse(error_body(message, code="method_not_allowed"), status_code=405, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # a parameter FastAPI validates: a 400 in OpenAI's shape, as a body the routes validate (never a 422)
        first = (err.errors() or [{}])[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        message = f"{param or 'request'}: {first.get('msg', 'invalid')}"
        return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=400)
