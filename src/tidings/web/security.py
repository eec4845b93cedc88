"""The dashboard's session cookie and CSRF tokens, signed with the instance secret (HMAC-SHA256).

The cookie holds only the API key's id, when the session began and a random nonce, plus their
signature: never the key itself. Every request looks the key up again, so revoking the key signs
its sessions out at once. A CSRF token is the HMAC of the cookie's value, so it is different for
every sign-in, cannot be made without the secret, and needs no server-side storage; the sign-in
form, which has no session yet, binds its token to a random pre-session cookie the same way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

SESSION_COOKIE = "tidings_session"
LOGIN_COOKIE = "tidings_login"  # the pre-session nonce the sign-in form's CSRF token is bound to
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: A dashboard session ends after this long, whatever happens; signing in again is one paste.
SESSION_MAX_AGE = timedelta(hours=12)
#: Issue times this far in the future still pass: another host's clock may run ahead.
CLOCK_SKEW = timedelta(minutes=5)
NONCE_BYTES = 16
MAX_COOKIE_CHARS = 200  # longer values are refused before any work

# Domain separation: a signature made for one purpose is never valid for another (nor is any of
# them valid as an unsubscribe token, which derives its own keys from the same secret).
_SESSION_PURPOSE = b"tidings/web/session/v1"
_CSRF_PURPOSE = b"tidings/web/csrf/v1"
_LOGIN_PURPOSE = b"tidings/web/login-csrf/v1"


@dataclass(frozen=True, slots=True)
class SessionClaims:
    key_id: int
    issued_at: datetime


def _mac(secret: str, purpose: bytes, value: str) -> str:
    key = hmac.new(secret.encode(), purpose, hashlib.sha256).digest()
    digest = hmac.new(key, value.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_session(*, secret: str, key_id: int, now: datetime) -> str:
    """A new cookie value for a sign-in with the key ``key_id``."""
    body = f"{key_id}.{int(now.timestamp())}.{secrets.token_urlsafe(NONCE_BYTES)}"
    return f"{body}.{_mac(secret, _SESSION_PURPOSE, body)}"


def read_session(*, secret: str, value: str | None, now: datetime) -> SessionClaims | None:
    """The claims of a cookie this instance signed and that has not expired; None otherwise."""
    if not value or len(value) > MAX_COOKIE_CHARS:
        return None
    body, _, signature = value.rpartition(".")
    if not hmac.compare_digest(signature.encode(), _mac(secret, _SESSION_PURPOSE, body).encode()):
        return None
    parts = body.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    key_id, issued = parts[0], parts[1]
    issued_at = datetime.fromtimestamp(int(issued), tz=now.tzinfo)
    if not now - SESSION_MAX_AGE <= issued_at <= now + CLOCK_SKEW:
        return None
    return SessionClaims(key_id=int(key_id), issued_at=issued_at)


def csrf_token(*, secret: str, session_value: str) -> str:
    """The token every POST form of this session must carry."""
    return _mac(secret, _CSRF_PURPOSE, session_value)


def new_login_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def login_csrf_token(*, secret: str, nonce: str) -> str:
    """The sign-in form's token, bound to the pre-session cookie ``nonce``."""
    return _mac(secret, _LOGIN_PURPOSE, nonce)


def tokens_match(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())
