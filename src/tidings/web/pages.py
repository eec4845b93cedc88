"""How a dashboard page is rendered and how its failures become pages instead of JSON.

``DashboardRoute`` is the route class of every dashboard router. It turns the errors a handler
raises (``tidings.errors.*``, a failed form validation, a missing sign-in) into ``PageInterrupt``,
which passes *through* the request's session dependency, so the transaction is rolled back exactly
as for the API, and is then answered with an HTML page (or a redirect to the sign-in form) by the
route itself. The API's one error mapping in ``api/errors.py`` stays the only JSON one.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.types import Receive, Scope, Send

from tidings import __version__, errors
from tidings.api.deps import READ_PRIMARY_COOKIE, READ_PRIMARY_SECONDS
from tidings.api.errors import status_for
from tidings.web import security
from tidings.web.formatting import FILTERS

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

#: Sent with every dashboard answer. Scripts only from this origin (htmx and ours, no inline code);
#: inline styles are allowed because an email shown in the sandboxed inbox frame inherits this
#: policy and mail is styled inline; remote images stay blocked there, as a mail client would.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,  # a typo in a template fails loudly in the tests
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(FILTERS)
templates.globals["version"] = __version__
#: What the layout reads, for pages rendered without a signed-in user (sign-in, errors).
LAYOUT_DEFAULTS: Mapping[str, Any] = {"user": None, "notice": None, "has_inbox": False}


#: Set in the request's scope by the check of every action that may write (``web/auth.py``).
WRITE_SCOPE_KEY = "tidings.web.writes"


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in form."""


class CsrfRejected(errors.PermissionDenied):
    """This form has expired or did not come from this dashboard. Reload the page and try again."""

    code = "csrf_rejected"


class PageInterrupt(Exception):
    """Carries the answer to a failed request past the session dependency (which rolls back)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def render(
    request: Request, name: str, context: Mapping[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    """The page ``name`` rendered with ``context``; ``request`` gives templates the current path."""
    values = {**LAYOUT_DEFAULTS, **context}
    html = templates.get_template(name).render(request=request, **values)
    return HTMLResponse(html, status_code=status_code)


def error_page(request: Request, *, status_code: int, title: str, message: str) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"title": title, "message": message, "user": None},
        status_code=status_code,
    )


TITLES = {
    400: "That did not work",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible right now",
    413: "Too large",
    422: "Please check the form",
}


def _sign_in_answer(request: Request) -> Response:
    if request.url.path.startswith("/events/"):
        return PlainTextResponse("sign in first", status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response: Response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    if request.headers.get("hx-request"):
        # An htmx request would swap the sign-in page into a fragment; have it navigate instead.
        response = Response(status_code=204, headers={"HX-Redirect": "/login"})
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response


def interrupt_for(request: Request, exc: Exception) -> PageInterrupt | None:
    """The page answering ``exc``, or None when it is not an error the dashboard answers."""
    if isinstance(exc, SignInRequired):
        return PageInterrupt(_sign_in_answer(request))
    if isinstance(exc, errors.TidingsError):
        status = status_for(exc)
        return PageInterrupt(
            error_page(
                request,
                status_code=status,
                title=TITLES.get(status, "That did not work"),
                message=exc.message,
            )
        )
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = str(first.get("msg", "the form is not valid"))
        return PageInterrupt(
            error_page(
                request,
                status_code=422,
                title=TITLES[422],
                message=f"{where}: {message}" if where else message,
            )
        )
    return None


def _read_primary_for_a_while(request: Request, response: Response) -> None:
    """After a write, this browser reads the primary for ``READ_PRIMARY_SECONDS``: the replica may
    not have the write yet, and the page the action redirects to must show it (read your writes).
    Unsigned: all a forged value can do is send its own reads to the primary for a while."""
    runtime = request.app.state.runtime
    if runtime.replica is None:
        return
    until = int(runtime.clock.now().timestamp()) + READ_PRIMARY_SECONDS
    response.set_cookie(
        READ_PRIMARY_COOKIE,
        str(until),
        max_age=READ_PRIMARY_SECONDS,
        path="/",
        httponly=True,
        samesite="lax",
        secure=runtime.settings.public_url.startswith("https://"),
    )


class DashboardRoute(APIRoute):
    """A dashboard route: HTML error pages, security headers, and rollback on every failure."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as exc:
                interrupt = interrupt_for(request, exc)
                if interrupt is None:
                    raise
                raise interrupt from exc
            response.headers.update(SECURITY_HEADERS)
            if request.scope.get(WRITE_SCOPE_KEY) and response.status_code < 400:
                _read_primary_for_a_while(request, response)
            return response

        return page

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().handle(scope, receive, send)
        except PageInterrupt as interrupt:
            interrupt.response.headers.update(SECURITY_HEADERS)
            await interrupt.response(scope, receive, send)
