"""The pages recipients reach from the links in a mail: ``/u/{token}`` (RFC 8058 one-click
unsubscribe and its confirmation page) and ``/p/{token}`` (the preference centre).

No cookie, no key: the signed token in the path is the whole authority (see ``tokens.py``). Every
link that is not one this server issued (forged, altered, expired, naming another tenant's
contact, or a contact since deleted) gets the same 404 page, so the answer tells nothing about
why. ``GET`` never changes anything, because link scanners and mail previews follow GETs.

``POST /u/{token}`` with ``List-Unsubscribe=One-Click`` (form-encoded or multipart, as RFC 8058
allows) commits the unsubscribe before it answers 200, without a redirect (RFC 8058 §3.2).

Cross-site request forgery. A forged request needs the token, and whoever holds the token can
already do everything the page does, without a browser; there is no ambient credential (cookie,
session) for another site to ride on. The real risks are different and handled so:

* *The token leaking from the page*: ``Referrer-Policy: no-referrer``, ``Cache-Control:
  no-store`` and ``noindex``.
* *Clickjacking* (the page framed invisibly under a decoy button): ``frame-ancestors 'none'``.
* *Blind cross-site posts to the preference centre* from a page that learnt the token: every form
  carries ``form_nonce``, an HMAC of the token and the render time under a key derived from the
  instance secret, checked on ``POST /p`` and valid for a day. Another origin cannot read the
  page to obtain one (same-origin policy), so a preference change needs the page to have been
  shown. The one-click ``POST /u`` takes no nonce on purpose: mailbox providers send it without
  ever loading a page, and its only effect is the one the recipient asked for.

A link acts only for the recipient of the sent message it came in (``tokens.py``,
``services/preferences.resolve``). Previews show ``/u/preview`` and ``/p/preview`` instead of
working links: those answer a page saying so and change nothing. Every route here is rate-limited
per token and per client address (``api/rate_limit.py``), answering 429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy.orm import Session

from tidings import tokens
from tidings.api import rate_limit
from tidings.api.deps import NowDep, RuntimeDep, SessionDep
from tidings.errors import InvalidToken
from tidings.runtime import Runtime
from tidings.services import preferences
from tidings.services.preferences import Subscriber

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

TEMPLATES = Path(__file__).resolve().parents[2] / "web" / "templates" / "public"
FORM_NONCE_MAX_AGE = 86_400  # seconds: a preference page left open a whole day still saves
FORM_NONCE_SKEW = 300  # seconds: another server's clock may run ahead
ONE_CLICK_VALUE = "One-Click"  # RFC 8058: the body is exactly List-Unsubscribe=One-Click

OneClickField = Annotated[str | None, Form(alias="List-Unsubscribe")]


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A rendered page with the headers every public page carries (see the module docstring)."""
    style_nonce = secrets.token_urlsafe(16)
    values.setdefault("tenant_name", None)
    html = _environment().get_template(name).render(style_nonce=style_nonce, **values)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Robots-Tag": "noindex, nofollow",
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{style_nonce}'; form-action 'self'; "
                "frame-ancestors 'none'; base-uri 'none'"
            ),
        },
    )


def _not_found() -> HTMLResponse:
    """The one answer for every link this server did not issue, whatever the reason."""
    return _page(
        "invalid.html",
        404,
        heading="This link is not valid",
        message="It may be incomplete or out of date. Use the link in a more recent email, "
        "or contact the sender.",
    )


def _preview_page() -> HTMLResponse:
    """What the inert links of a preview answer: nothing is changed, whatever the method."""
    return _page(
        "invalid.html",
        heading="This is a preview link",
        message="In the real email this link leads the recipient to unsubscribe or choose "
        "what they receive. Nothing was changed.",
    )


_LIMITER_LOCK = threading.Lock()


def _limiter(request: Request) -> rate_limit.RateLimiter:
    """The app's one limiter, made on first use (each app, e.g. each test's, has its own)."""
    state = request.app.state
    with _LIMITER_LOCK:
        limiter: rate_limit.RateLimiter | None = getattr(state, "public_link_limiter", None)
        if limiter is None:
            limiter = state.public_link_limiter = rate_limit.RateLimiter(
                {"token": rate_limit.PER_TOKEN, "client": rate_limit.PER_CLIENT}
            )
    return limiter


def _too_many(request: Request, token: str) -> HTMLResponse | None:
    """The 429 page when this token or this client went over its limit, else None (counted)."""
    client = request.client.host if request.client is not None else ""
    # A digest keeps the memory per key small whatever the length of the token sent.
    key = hashlib.blake2b(token.encode(errors="replace"), digest_size=16).digest()
    wait = _limiter(request).check({"token": key, "client": client})
    if wait is None:
        return None
    response = _page(
        "invalid.html",
        429,
        heading="Too many requests",
        message="This link was used too often in a short time. Nothing was changed; "
        "please try again in a few minutes.",
    )
    response.headers["Retry-After"] = rate_limit.retry_after(wait)
    return response


def _guard(request: Request, token: str) -> HTMLResponse | None:
    """The answer that stops a request before its token is read: 429, or the preview page."""
    limited = _too_many(request, token)
    if limited is not None:
        return limited
    return _preview_page() if token == tokens.PREVIEW_TOKEN else None


def masked(email: str) -> str:
    """Enough of the address to recognise it, not enough to learn it from a shared link."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}…@{domain}"


@dataclass(frozen=True, slots=True)
class _Link:
    token: str
    subscriber: Subscriber


def _open(
    session: Session, runtime: Runtime, token: str, kind: tokens.TokenKind, now: datetime
) -> _Link:
    claims = tokens.read_token(runtime.secret_key, token, kind=kind, now=now)
    return _Link(token, preferences.resolve(session=session, claims=claims))


def _preferences_link(runtime: Runtime, subscriber: Subscriber, now: datetime) -> str:
    """Relative to ``/u/{token}``, so the pages work under any public URL prefix."""
    token = tokens.make_token(
        runtime.secret_key,
        kind="preferences",
        tenant_id=subscriber.tenant_id,
        message_id=subscriber.message_id,
        contact_created=subscriber.contact_created,
        category=None,
        now=now,
    )
    return f"../p/{token}"


def _unsubscribe_page(link: _Link, runtime: Runtime, now: datetime, *, done: bool) -> HTMLResponse:
    subscriber = link.subscriber
    category = subscriber.category
    return _page(
        "unsubscribe.html",
        done=done,
        token=link.token,
        email=masked(subscriber.email),
        tenant_name=subscriber.tenant_name,
        category=category,
        scope=f"“{category}” emails" if category is not None else "emails",
        preferences_link=_preferences_link(runtime, subscriber, now),
    )


# -- /u/{token}: one-click unsubscribe --------------------------------------------------------


@router.get("/u/{token}")
def confirm_unsubscribe(
    request: Request, token: str, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> HTMLResponse:
    """The confirmation page: a button that POSTs the one-click body. Changes nothing."""
    if (stop := _guard(request, token)) is not None:
        return stop
    try:
        link = _open(session, runtime, token, "unsubscribe", now)
    except InvalidToken:
        return _not_found()
    return _unsubscribe_page(link, runtime, now, done=False)


@router.post("/u/{token}")
def one_click_unsubscribe(
    request: Request,
    token: str,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
    list_unsubscribe: OneClickField = None,
) -> HTMLResponse:
    """RFC 8058: unsubscribe, committed before the 200; repeating it changes nothing more.

    The token's category decides the scope: one category when the mail had one, else everything
    (``services/preferences.py`` says what each writes).
    """
    if (stop := _guard(request, token)) is not None:
        return stop
    if list_unsubscribe != ONE_CLICK_VALUE:
        return _page(
            "invalid.html",
            400,
            heading="Nothing was changed",
            message="The request did not say List-Unsubscribe=One-Click.",
        )
    try:
        link = _open(session, runtime, token, "unsubscribe", now)
    except InvalidToken:
        return _not_found()
    subscriber = link.subscriber
    preferences.unsubscribe(
        session=session,
        subscriber=subscriber,
        category=subscriber.category,
        source="one-click",
        now=now,
    )
    return _unsubscribe_page(link, runtime, now, done=True)


# -- /p/{token}: the preference centre -------------------------------------------------------


def _nonce_key(secret: str) -> bytes:
    return hmac.digest(secret.encode(), b"tidings/preferences-form/v1", "sha256")


def form_nonce(secret: str, token: str, now: datetime) -> str:
    """``<issued>.<HMAC(issued|token)>``: proves the form came from a page this server rendered."""
    issued = int(now.timestamp())
    mac = hmac.digest(_nonce_key(secret), f"{issued}|{token}".encode(), hashlib.sha256)
    return f"{issued}.{base64.urlsafe_b64encode(mac[:16]).rstrip(b'=').decode()}"


def nonce_is_valid(secret: str, token: str, nonce: str, now: datetime) -> bool:
    """Whether ``nonce`` is one ``form_nonce`` made for ``token`` in the last day.

    Anything else is simply not valid, never an error: ``compare_digest`` raises on non-ASCII
    text, and ``isdigit`` accepts digits that ``int`` refuses ("²"), so both are checked first.
    """
    if not nonce.isascii():
        return False
    issued_text, _, _mac = nonce.partition(".")
    if not issued_text.isdecimal() or len(issued_text) > 12:
        return False
    age = now.timestamp() - int(issued_text)
    if not -FORM_NONCE_SKEW <= age <= FORM_NONCE_MAX_AGE:
        return False
    expected = form_nonce(secret, token, datetime.fromtimestamp(int(issued_text), now.tzinfo))
    return hmac.compare_digest(expected, nonce)


def _preferences_page(
    session: Session,
    runtime: Runtime,
    link: _Link,
    now: datetime,
    *,
    message: str | None = None,
    error: bool = False,
    announce: bool = False,
    status: int = 200,
) -> HTMLResponse:
    """The page; ``announce`` makes the "unsubscribed from everything" notice the status message."""
    view = preferences.preferences_view(session=session, subscriber=link.subscriber)
    return _page(
        "preferences.html",
        status,
        view=view,
        token=link.token,
        email=masked(link.subscriber.email),
        tenant_name=link.subscriber.tenant_name,
        can_choose=link.subscriber.contact_id is not None,
        form_nonce=form_nonce(runtime.secret_key, link.token, now),
        message=message,
        error=error,
        announce=announce,
    )


@router.get("/p/{token}")
def preference_centre(
    request: Request, token: str, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> HTMLResponse:
    if (stop := _guard(request, token)) is not None:
        return stop
    try:
        link = _open(session, runtime, token, "preferences", now)
    except InvalidToken:
        return _not_found()
    return _preferences_page(session, runtime, link, now)


@router.post("/p/{token}")
def save_preference_centre(
    request: Request,
    token: str,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
    action: Annotated[str, Form()] = "save",
    category: Annotated[list[str] | None, Form()] = None,
    form_nonce_value: Annotated[str, Form(alias="form_nonce")] = "",
) -> HTMLResponse:
    """Save the ticked categories, unsubscribe from everything, or subscribe again.

    Subscribing again is only ever the recipient's own act: it needs the link from their mail
    (no API key of any role can make one) and a form nonce from a page this server showed.
    """
    if (stop := _guard(request, token)) is not None:
        return stop
    try:
        link = _open(session, runtime, token, "preferences", now)
    except InvalidToken:
        return _not_found()
    if not nonce_is_valid(runtime.secret_key, token, form_nonce_value, now):
        return _preferences_page(
            session,
            runtime,
            link,
            now,
            message="This page was open too long or did not come from us. "
            "Nothing was changed; please make your choice again.",
            error=True,
            status=400,
        )
    subscriber = link.subscriber
    if action == "unsubscribe_all":
        preferences.unsubscribe(
            session=session,
            subscriber=subscriber,
            category=None,
            source="preference centre",
            now=now,
        )
        session.flush()
        return _preferences_page(session, runtime, link, now, announce=True)
    if action == "resubscribe":
        preferences.resubscribe(session=session, subscriber=subscriber, now=now)
        message = "You are subscribed again."
    else:
        preferences.save_preferences(
            session=session, subscriber=subscriber, subscribed=category or [], now=now
        )
        message = "Your preferences are saved."
    session.flush()
    return _preferences_page(session, runtime, link, now, message=message)
