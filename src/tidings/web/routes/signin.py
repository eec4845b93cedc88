"""Signing in with an API key (which becomes a signed, HTTP-only session cookie) and out again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from tidings.api.deps import NowDep, RuntimeDep, SessionDep
from tidings.errors import Unauthenticated
from tidings.runtime import Runtime
from tidings.services.tenants import authenticate
from tidings.web import security
from tidings.web.auth import ViewerAction
from tidings.web.pages import CsrfRejected, DashboardRoute, render

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

LOGIN_NONCE_SECONDS = 3600  # the sign-in form stays usable this long


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (no ``//host`` or ``https://``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _secure(runtime: Runtime) -> bool:
    return runtime.settings.public_url.startswith("https://")


def _login_form(
    request: Request,
    runtime: Runtime,
    *,
    next_path: str,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    nonce = request.cookies.get(security.LOGIN_COOKIE) or security.new_login_nonce()
    response = render(
        request,
        "login.html",
        {
            "user": None,
            "next": next_path,
            "error": error,
            "signed_out": request.query_params.get("done") == "signed-out",
            "csrf_token": security.login_csrf_token(secret=runtime.secret_key, nonce=nonce),
        },
        status_code=status_code,
    )
    response.set_cookie(
        security.LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_NONCE_SECONDS,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=_secure(runtime),
    )
    return response


@router.get("/login")
def login_page(
    request: Request, runtime: RuntimeDep, now: NowDep, next: str | None = None
) -> Response:
    session_value = request.cookies.get(security.SESSION_COOKIE)
    if security.read_session(secret=runtime.secret_key, value=session_value, now=now):
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_form(request, runtime, next_path=safe_next(next))


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
    api_key: Annotated[str, Form(max_length=400)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    nonce = request.cookies.get(security.LOGIN_COOKIE)
    if not nonce or not security.tokens_match(
        csrf_token, security.login_csrf_token(secret=runtime.secret_key, nonce=nonce)
    ):
        raise CsrfRejected()
    try:
        principal = authenticate(session=session, secret=api_key.strip())
    except Unauthenticated:
        return _login_form(
            request,
            runtime,
            next_path=safe_next(next),
            error="That key is not valid: it may be mistyped or revoked.",
            status_code=401,
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        security.SESSION_COOKIE,
        security.issue_session(secret=runtime.secret_key, key_id=principal.key_id, now=now),
        max_age=int(security.SESSION_MAX_AGE.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(runtime),
    )
    response.delete_cookie(security.LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(_user: ViewerAction) -> Response:
    response = RedirectResponse("/login?done=signed-out", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response
