"""``BodySizeLimit``: request bodies capped before they are read, per route."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.api.errors import error_response


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


def takes_attachments(route: BaseRoute) -> bool:
    """Whether ``route``'s JSON body may carry attachments (an ``attachments`` field)."""
    if not isinstance(route, APIRoute) or route.body_field is None:
        return False
    model = route.body_field.field_info.annotation
    return isinstance(model, type) and "attachments" in getattr(model, "model_fields", {})
