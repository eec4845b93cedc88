"""How a report names the message it is about: our ``Message-ID``, or a VERP return path.

Both carry the message's id with an HMAC of it under the instance secret, so a report can be
matched without trusting the reporter, and nobody can make up a report that suppresses an address
they never received mail for. The Message-ID's form is ``delivery/compose.py``'s
(``<{id}.{hmac20}@{domain}>``); the VERP form is ``{local}+m{id}.{hmac16}@{domain}`` (RFC-neutral
characters only, so that every MTA keeps it intact).
"""

from __future__ import annotations

import hashlib
import hmac
import re

MESSAGE_ID_DIGEST_LENGTH = 20  # hex characters, as delivery/compose.py writes them
VERP_DIGEST_LENGTH = 16  # hex characters
_MESSAGE_ID = re.compile(r"^<?(\d{1,19})\.([0-9a-f]{20})@[^<>\s]+>?$")
_VERP = re.compile(
    r"^(?P<local>[^@+\s]+)\+m(?P<id>\d{1,19})\.(?P<sig>[0-9a-f]{16})@(?P<domain>\S+)$"
)


def _digest(secret: str, value: str) -> str:
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def clean_message_id(value: str) -> str:
    """A Message-ID as one token in angle brackets (reports fold and pad it)."""
    token = "".join(value.split())
    if token and not token.startswith("<"):
        token = f"<{token}>"
    return token


def message_id_from_header(secret: str, header: str) -> int | None:
    """Our message's id when ``header`` is a Message-ID we wrote, else None."""
    match = _MESSAGE_ID.match(clean_message_id(header))
    if match is None:
        return None
    message_id, digest = match.groups()
    expected = _digest(secret, message_id)[:MESSAGE_ID_DIGEST_LENGTH]
    return int(message_id) if hmac.compare_digest(digest, expected) else None


def verp_address(secret: str, bounce_address: str, message_id: int) -> str:
    """The envelope sender that routes a message's bounces back to us, naming the message."""
    local, _, domain = bounce_address.rpartition("@")
    if not local or not domain:
        raise ValueError("the bounce address must look like local@domain")
    digest = _digest(secret, f"verp:{message_id}")[:VERP_DIGEST_LENGTH]
    return f"{local}+m{message_id}.{digest}@{domain}"


def message_id_from_verp(secret: str, address: str) -> int | None:
    """Our message's id when ``address`` is a VERP return path we made, else None."""
    match = _VERP.match(address.strip().strip("<>"))
    if match is None:
        return None
    expected = _digest(secret, f"verp:{match['id']}")[:VERP_DIGEST_LENGTH]
    return int(match["id"]) if hmac.compare_digest(match["sig"], expected) else None
