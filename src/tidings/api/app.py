"""``create_app``: the FastAPI application, and the one place where errors become HTTP answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings import __version__, errors
from tidings.api.routes import ROUTERS
from tidings.api.uploads import takes_upload
from tidings.runtime import Runtime, freeze_startup_objects
from tidings.tracking.hits import flushing

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


def _status_for(exc: errors.TidingsError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 400


async def _on_tidings_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.TidingsError)
    message = exc.message
    if isinstance(exc, errors.TemplateSyntaxError) and exc.line is not None:
        message = f"{message} (line {exc.line})"
    return error_response(_status_for(exc), exc.code, message, exc.field)


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


class BodySizeLimit:
    """Refuses a body over its cap with 413 before it is read whole.

    Every request is capped at TIDINGS_MAX_BODY_BYTES, whatever its path, method or content type,
    but for the routes that take an upload (matched by method and route template, never by path
    alone), capped at TIDINGS_MAX_IMPORT_BYTES. A declared ``Content-Length`` over the cap is
    refused at once; a chunked body is counted as it streams and cut off when it passes the cap.
    Any answer but a success given before the body was read whole (a refusal, a redirect to sign
    in) closes the connection, so that the server does not go on receiving, and dropping,
    whatever the client still sends.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        max_import: int,
        upload_routes: Sequence[BaseRoute],
        max_attachments: int = 0,
        attachment_routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_import = max_import
        self.upload_routes = upload_routes
        # A body with attachments may be their base64 (4 characters per 3 bytes) larger.
        self.max_with_attachments = max_body + (max_attachments + 2) // 3 * 4
        self.attachment_routes = attachment_routes

    def _cap(self, scope: Scope) -> int:
        for route in self.upload_routes:
            if route.matches(scope)[0] is Match.FULL:
                return self.max_import
        for route in self.attachment_routes:
            if route.matches(scope)[0] is Match.FULL:
                return self.max_with_attachments
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self._cap(scope)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            response = error_response(
                413, "payload_too_large", f"the request body is over {cap} bytes"
            )
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        seen = 0
        read_whole = declared in (None, b"0") and b"transfer-encoding" not in headers

        async def counted() -> Message:
            nonlocal seen, read_whole
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise StarletteHTTPException(413, f"the request body is over {cap} bytes")
                read_whole = not message.get("more_body", False)
            return message

        async def closing(message: Message) -> None:
            if (
                message["type"] == "http.response.start"
                and message["status"] >= 300
                and not read_whole
            ):
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, counted, closing)


def _takes_attachments(route: BaseRoute) -> bool:
    """Whether ``route``'s JSON body may carry attachments (an ``attachments`` field)."""
    if not isinstance(route, APIRoute) or route.body_field is None:
        return False
    model = route.body_field.field_info.annotation
    return isinstance(model, type) and "attachments" in getattr(model, "model_fields", {})


def create_app(runtime: Runtime, *, embedded_workers: int = 0) -> FastAPI:
    """The application; `embedded_workers` delivery workers run in its lifespan (0 for API only)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tracking hits are flushed for as long as the app serves, and once more at its end.
        async with flushing(runtime), serving(app):
            yield

    @contextlib.asynccontextmanager
    async def serving(_app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()
        if embedded_workers == 0:
            try:
                yield
            finally:
                await asyncio.to_thread(runtime.stop_rendering)
            return
        from tidings.delivery.worker import run_workers

        stop = asyncio.Event()
        delivery = asyncio.create_task(run_workers(runtime, stop, count=embedded_workers))
        try:
            yield
        finally:
            stop.set()  # in-flight sends finish and are recorded before the server exits
            await delivery
            await asyncio.to_thread(runtime.stop_rendering)

    app = FastAPI(
        lifespan=lifespan,
        title="Tidings",
        version=__version__,
        description="Self-hosted email delivery: campaigns and transactional sends through a throttled, retrying queue.",
    )
    app.state.runtime = runtime
    app.add_exception_handler(errors.TidingsError, _on_tidings_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _on_database_unavailable)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _on_database_unavailable)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(
        BodySizeLimit,
        max_body=runtime.settings.max_body_bytes,
        max_import=runtime.settings.max_import_bytes,
        # The routers are included without a prefix: their own routes are the app's.
        upload_routes=[
            route for router in ROUTERS for route in router.routes if takes_upload(route)
        ],
        max_attachments=runtime.settings.max_attachment_bytes,
        attachment_routes=[
            route for router in ROUTERS for route in router.routes if _takes_attachments(route)
        ],
    )
    return app


#: How ``tidings serve --processes N`` tells each API process its ``--workers`` (uvicorn starts
#: them by import string, with no arguments). Internal: not a setting.
EMBEDDED_WORKERS_ENV = "TIDINGS_SERVE_EMBEDDED_WORKERS"


def app_from_environment() -> FastAPI:
    """One of ``tidings serve --processes N``'s processes: settings from the environment, and a
    runtime of its own (pooled connections cannot be shared across processes). The parent has
    already validated the settings and migrated a new SQLite file."""
    from tidings.config import Settings
    from tidings.logging import configure_logging
    from tidings.runtime import build_runtime

    settings = Settings()
    configure_logging(settings)
    runtime = build_runtime(settings, migrate=False)
    return create_app(runtime, embedded_workers=int(os.environ.get(EMBEDDED_WORKERS_ENV, "0")))
