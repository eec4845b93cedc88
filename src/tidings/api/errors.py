"""Where errors become HTTP answers, for the API and the dashboard alike: the status of each
``TidingsError`` (``STATUS_BY_ERROR``; the dashboard renders the same status as a page) and the
JSON body every API refusal carries, ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from tidings import errors

log = logging.getLogger("tidings.api")

STATUS_BY_ERROR: dict[type[errors.TidingsError], int] = {
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.InvalidInput: 422,
    errors.ConfigurationError: 500,
}
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message, "field": field}},
        status_code=status,
        headers=headers,
    )


def status_for(exc: errors.TidingsError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 400


async def _on_tidings_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.TidingsError)
    message = exc.message
    if isinstance(exc, errors.TemplateSyntaxError) and exc.line is not None:
        message = f"{message} (line {exc.line})"
    return error_response(status_for(exc), exc.code, message, exc.field)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or (str(loc[-1]) if loc else None)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = _field_of(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request"))
    return error_response(422, "invalid", f"{field}: {message}" if field else message, field)


async def _on_database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """Connection pool exhausted or database unreachable: a retryable 503, never a 500 traceback."""
    log.warning("database unavailable: %s", exc.__class__.__name__)
    response = error_response(
        503, "unavailable", "the database is busy or unreachable; retry shortly"
    )
    response.headers["Retry-After"] = "1"
    return response


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = CODE_BY_STATUS.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _on_client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    """The client hung up in the middle of its body (an upload): nobody is left to answer."""
    log.info("the client went away before it had sent its request body")
    return error_response(400, "bad_request", "the client went away before the body was sent")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.TidingsError, _on_tidings_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _on_database_unavailable)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _on_database_unavailable)
