"""Reads the outbox maildir back, so the dashboard can show a sent message as its recipient sees it.

Only files named by the tenant's own ``messages.provider_message_id`` are ever opened (the outbox
transport records each file's name there), so one tenant never sees another's mail even though
they share one maildir. The HTML part is shown in a sandboxed frame by the template, never inline.

The unsubscribe and preference links in a shown mail are replaced by the inert ``/u/preview`` and
``/p/preview``: a link acts for its recipient (``tokens.py``), and a dashboard user, a viewer
included, must not be able to unsubscribe or resubscribe someone by copying it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from tidings.errors import ConfigurationError
from tidings.transports.factory import parse_outbox_url

MAX_MESSAGE_BYTES = 10_000_000  # larger files are not shown
HEADER_READ_BYTES = 64 * 1024  # the inbox list reads only this much of each file
#: A ``/u/``, ``/p/`` or ``/s/confirm/`` link's token (URL-safe base64; every real token is
#: longer than 20): a dashboard user must not confirm a sign-up for its recipient either.
_LINK_TOKEN = re.compile(r"(/(?:[up]|s/confirm)/)[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])")
#: Headers worth showing to someone checking what was sent.
SHOWN_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "Reply-To")


@dataclass(frozen=True, slots=True)
class InboxMessage:
    name: str
    headers: list[tuple[str, str]]
    subject: str
    html: str | None
    text: str | None


def outbox_dir(transport_url: str) -> Path | None:
    """The maildir of an outbox transport URL; None for any other transport."""
    if not transport_url.lower().startswith("outbox:"):
        return None
    try:
        return parse_outbox_url(transport_url)
    except ConfigurationError:
        return None


def _find(maildir: Path, name: str) -> Path | None:
    # The name comes from our own database, but it still must not leave the maildir.
    if not name or name.startswith(".") or "/" in name or "\x00" in name:
        return None
    fresh = maildir / "new" / name
    if fresh.is_file():
        return fresh
    # A mail client that read it moved it to cur/ with flags after a colon (name:2,S).
    for seen in (maildir / "cur").glob(f"{_glob_escape(name)}:2,*"):
        if seen.is_file():
            return seen
    seen = maildir / "cur" / name
    return seen if seen.is_file() else None


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _part(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or not isinstance(part, EmailMessage):
        return None
    content = part.get_content()
    return content if isinstance(content, str) else None


def inert_links(text: str) -> str:
    """``text`` with every unsubscribe / preferences token replaced by the preview placeholder."""
    return _LINK_TOKEN.sub(r"\1preview", text)


def _inert(text: str | None) -> str | None:
    return None if text is None else inert_links(text)


def read_message(maildir: Path, name: str) -> InboxMessage | None:
    """The message stored as ``name``; None when it is gone (cleaned up, moved away) or too big."""
    path = _find(maildir, name)
    if path is None or path.stat().st_size > MAX_MESSAGE_BYTES:
        return None
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    headers = [(h, inert_links(str(message[h]))) for h in SHOWN_HEADERS if message[h] is not None]
    return InboxMessage(
        name=name,
        headers=headers,
        subject=str(message["Subject"] or ""),
        html=_inert(_part(message, "html")),
        text=_inert(_part(message, "plain")),
    )


def read_headers(maildir: Path, name: str) -> dict[str, str]:
    """The shown headers of ``name`` (read from the file's head only); empty when it is gone."""
    path = _find(maildir, name)
    if path is None:
        return {}
    with path.open("rb") as handle:
        head = handle.read(HEADER_READ_BYTES)
    message = BytesParser(policy=policy.default).parsebytes(head, headersonly=True)
    return {h: inert_links(str(message[h])) for h in SHOWN_HEADERS if message[h] is not None}
