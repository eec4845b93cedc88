"""The public sign-up form of a list (``/s/{public_id}``) and its confirmation (``/s/confirm/{token}``).

What a sign-up does is ``services/signups.py``; this module keeps the form from being a way to
learn or harm anything:

* **No enumeration.** Every sign-up that passes the checks gets the same page (or the same JSON),
  whatever the address: new, known, subscribed, unsubscribed, bounced. The answer is also held
  back until ``ANSWER_SECONDS`` after the request came in, after the transaction committed, so the
  time to answer does not tell a path that queued a confirmation mail from one that did nothing.
  An unknown ``public_id`` and a list that is not public get the same 404 page.
* **Honeypot.** The form has a ``website`` field people never see; a request that fills it gets
  the success answer and changes nothing.
* **Rate limits** per client address and per address signed up (``api/rate_limit.py``): 429 with
  ``Retry-After``. They are kept in this process's memory: with N API processes a client can get
  up to N times the limit through. The per-address limit caps the confirmation mails one person
  can be sent; with several processes, that cap is N times as high, still a bound.
* **Scanners.** ``GET /s/confirm/{token}`` only shows a button; only its ``POST`` confirms, with the
  form nonce of ``public.py`` (a blind cross-site post cannot confirm for someone).

The form may be posted from another site (a tenant's own page can hold it), form-encoded or JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tidings import tokens
from tidings.address_hash import address_key
from tidings.api import rate_limit
from tidings.api.deps import NowDep, RuntimeDep, SessionDep
from tidings.api.routes.public import _guard, _not_found, _page, form_nonce, masked, nonce_is_valid
from tidings.db.engine import transaction
from tidings.errors import InvalidInput, InvalidToken, NotFound
from tidings.runtime import Runtime
from tidings.services import signups
from tidings.services.contacts import clean_email

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

#: Every sign-up answer leaves this long after the request arrived (seconds): longer than the
#: slowest path (a confirmation mail queued), so that all paths take the same time.
ANSWER_SECONDS = 0.25
MAX_BODY_BYTES = 16 * 1024  # a form of an address, a name and some categories
HONEYPOT = "website"
FORM_TYPES = ("application/x-www-form-urlencoded", "application/json")


def _limiter(request: Request) -> rate_limit.RateLimiter:
    state = request.app.state
    limiter: rate_limit.RateLimiter | None = getattr(state, "signup_limiter", None)
    if limiter is None:  # a race makes two, one is kept: a few requests counted in the other
        limiter = state.signup_limiter = rate_limit.RateLimiter(
            {"client": rate_limit.SIGNUP_PER_CLIENT, "email": rate_limit.SIGNUP_PER_EMAIL}
        )
    return limiter


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else ""


async def _fields(request: Request) -> tuple[dict[str, Any], bool] | None:
    """The submitted fields and whether they came as JSON; None when the body is not a form."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in FORM_TYPES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    if media_type == "application/json":
        try:
            parsed = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return None
        return (parsed, True) if isinstance(parsed, dict) else None
    try:
        form = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=200)
    except (ValueError, UnicodeDecodeError):
        return None
    fields: dict[str, Any] = {k: v[0] for k, v in form.items() if k != "categories"}
    fields["categories"] = form.get("categories", [])
    return fields, False


def _chosen(fields: Mapping[str, Any]) -> list[str]:
    chosen = fields.get("categories") or []
    if isinstance(chosen, str):
        chosen = [chosen]
    return [c for c in chosen if isinstance(c, str)] if isinstance(chosen, list) else []


def _form_page(
    runtime: Runtime,
    public_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> HTMLResponse:
    with runtime.sessions() as session:
        try:
            contact_list = signups.public_list(session=session, public_id=public_id)
        except NotFound:
            return _not_found()
        form = signups.signup_form(session=session, contact_list=contact_list)
        double_opt_in = contact_list.double_opt_in
    given = fields or {}
    return _page(
        "signup.html",
        status,
        form=form,
        tenant_name=form.tenant_name,
        public_id=public_id,
        double_opt_in=double_opt_in,
        error=error,
        email=given.get("email") if isinstance(given.get("email"), str) else "",
        given_name=given.get("name") if isinstance(given.get("name"), str) else "",
        chosen=_chosen(given),
    )


@router.get("/s/{public_id}")
def signup_page(request: Request, public_id: str, runtime: RuntimeDep) -> HTMLResponse:
    if (stop := _guard(request, public_id)) is not None:
        return stop
    return _form_page(runtime, public_id)


def _record(
    runtime: Runtime, public_id: str, fields: Mapping[str, Any], now: datetime
) -> tuple[str, bool] | None:
    """Record the sign-up in its own committed transaction: (list name, double opt-in), or None
    for a form that is not (or no longer) public. InvalidInput for an address that is not one."""
    with transaction(runtime.sessions) as session:
        try:
            contact_list = signups.public_list(session=session, public_id=public_id)
        except NotFound:
            return None
        answer = contact_list.name, contact_list.double_opt_in
        if not fields.get(HONEYPOT):
            signups.sign_up(
                session=session,
                contact_list=contact_list,
                email=fields.get("email"),
                name=fields.get("name"),
                chosen=_chosen(fields),
                now=now,
                address_key=address_key(runtime.secret_key),
            )
    return answer


def _too_many(wait: float, as_json: bool) -> Response:
    message = "Too many sign-ups in a short time. Please try again later."
    response: Response
    if as_json:
        response = JSONResponse({"error": {"code": "rate_limited", "message": message}}, 429)
    else:
        response = _page("invalid.html", 429, heading="Too many requests", message=message)
    response.headers["Retry-After"] = rate_limit.retry_after(wait)
    return response


async def _answer_at(started: float, response: Response) -> Response:
    await asyncio.sleep(max(0.0, started + ANSWER_SECONDS - time.monotonic()))
    return response


@router.post("/s/{public_id}")
async def sign_up(request: Request, public_id: str, runtime: RuntimeDep) -> Response:
    """Sign up to a public list: one answer for every address (see the module docstring)."""
    started = time.monotonic()
    parsed = await _fields(request)
    if parsed is None:
        return _page(
            "invalid.html",
            415,
            heading="Nothing was sent",
            message="The form did not arrive as a form or as a JSON object.",
        )
    fields, as_json = parsed
    keys: dict[str, Any] = {"client": _client(request)}
    try:
        email = clean_email(fields.get("email"))
        keys["email"] = hashlib.blake2b(email.lower().encode(), digest_size=16).digest()
    except InvalidInput:
        email = None
    if (wait := _limiter(request).check(keys)) is not None:
        return _too_many(wait, as_json)
    error: InvalidInput | None = None
    try:
        recorded = await run_in_threadpool(_record, runtime, public_id, fields, runtime.clock.now())
    except InvalidInput as exc:
        error, recorded = exc, None
    if error is not None:
        if as_json:
            body = {
                "error": {"code": "invalid_input", "message": error.message, "field": error.field}
            }
            return await _answer_at(started, JSONResponse(body, 400))
        page = await run_in_threadpool(
            _form_page, runtime, public_id, status=400, error=error.message, fields=fields
        )
        return await _answer_at(started, page)
    if recorded is None:
        if as_json:
            return JSONResponse({"error": {"code": "not_found", "message": "no such form"}}, 404)
        return _not_found()
    list_name, double_opt_in = recorded
    if as_json:
        response: Response = JSONResponse(
            {"status": "accepted", "double_opt_in": double_opt_in}, 202
        )
    else:
        response = _page("signup_done.html", list_name=list_name, double_opt_in=double_opt_in)
    return await _answer_at(started, response)


# -- /s/confirm/{token} -------------------------------------------------------------------------


def _confirm_page(
    token: str,
    found: signups.Confirmation,
    runtime: Runtime,
    now: datetime,
    *,
    done: bool,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    return _page(
        "confirm.html",
        status,
        done=done,
        token=token,
        email=masked(found.email),
        list_name=found.list_name,
        tenant_name=found.tenant_name,
        form_nonce=form_nonce(runtime.secret_key, token, now),
        error=error,
    )


def _open(session: Session, runtime: Runtime, token: str, now: datetime) -> signups.Confirmation:
    claims = tokens.read_token(runtime.secret_key, token, kind="confirm", now=now)
    return signups.confirmation(session=session, claims=claims, now=now)


@router.get("/s/confirm/{token}")
def confirm_page(
    request: Request, token: str, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> HTMLResponse:
    """A button that confirms; the GET itself changes nothing (link scanners follow GETs)."""
    if (stop := _guard(request, token)) is not None:
        return stop
    try:
        found = _open(session, runtime, token, now)
    except InvalidToken:
        return _not_found()
    return _confirm_page(token, found, runtime, now, done=found.signup.confirmed_at is not None)


@router.post("/s/confirm/{token}")
async def confirm(
    request: Request, token: str, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> HTMLResponse:
    if (stop := _guard(request, token)) is not None:
        return stop
    form = await request.form(max_files=0, max_fields=10)
    nonce = form.get("form_nonce")

    def act() -> HTMLResponse:
        try:
            found = _open(session, runtime, token, now)
        except InvalidToken:
            return _not_found()
        if not isinstance(nonce, str) or not nonce_is_valid(runtime.secret_key, token, nonce, now):
            return _confirm_page(
                token,
                found,
                runtime,
                now,
                done=False,
                status=400,
                error="This page was open too long or did not come from us; please press the "
                "button again.",
            )
        signups.confirm(session=session, found=found, now=now)
        return _confirm_page(token, found, runtime, now, done=True)

    return await run_in_threadpool(act)
