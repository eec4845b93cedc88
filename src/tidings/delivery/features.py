"""A claimed message's Reply-To, extra headers and attachments, as it sends them.

Each comes from the most specific place that gives it: the message itself (a transactional send,
a campaign's test send), else its campaign, else its template; headers merge by name, the more
specific winning. An attachment's content is read from the database once per worker and file and
kept already base64-encoded (``AttachmentCache``): a campaign of 100,000 with one 2 MB file reads
and encodes it once, not 100,000 times, and each message only points at the same bytes.
"""

from __future__ import annotations

import threading
from base64 import b64encode
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.db.models import Attachment as AttachmentRow
from tidings.db.tenancy import ids, owned
from tidings.domain.message import Attachment
from tidings.errors import TidingsError

RowKey = tuple[int, int]  # (tenant_id, id), as compose.RowKey
#: Encoded attachment content a worker keeps: enough for a few campaigns' files at their largest.
ATTACHMENT_CACHE_BYTES = 64 * 1024 * 1024  # bytes of base64
_B64_LINE = 76  # characters per base64 line in MIME (RFC 2045)


@dataclass(frozen=True, slots=True)
class EncodedContent:
    """One file's content, encoded once for every message that carries it."""

    content_base64: str  # one line, for HTTP APIs
    mime_body: bytes  # 76-character CRLF lines, for MIME

    @classmethod
    def of(cls, content: bytes) -> EncodedContent:
        encoded = b64encode(content)
        lines = b"\r\n".join(
            [encoded[i : i + _B64_LINE] for i in range(0, len(encoded), _B64_LINE)]
        )
        return cls(content_base64=encoded.decode("ascii"), mime_body=lines)

    @property
    def cost(self) -> int:
        return len(self.mime_body)


class AttachmentCache:
    """Encoded contents by (tenant, attachment id), least recently used out past ``max_bytes``.

    Shared by a worker's batches, which claim in threads: a lock guards it. Contents never change
    (a row is one content, by its hash), so an entry never goes stale.
    """

    def __init__(self, max_bytes: int = ATTACHMENT_CACHE_BYTES) -> None:
        self._max = max_bytes
        self._entries: OrderedDict[RowKey, EncodedContent] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.loads = 0  # rows read from the database (tests count them)

    def load(self, session: Session, keys: set[RowKey]) -> dict[RowKey, EncodedContent]:
        """The contents of ``keys``; those not cached are read in one query, each row kept only
        under its own tenant (``db.tenancy``): a message can only ever carry its tenant's file."""
        found: dict[RowKey, EncodedContent] = {}
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    found[key] = entry
        missing = keys - found.keys()
        if not missing:
            return found
        rows = session.connection().execute(
            select(AttachmentRow.id, AttachmentRow.tenant_id, AttachmentRow.content).where(
                AttachmentRow.id.in_(ids(missing))
            )
        )
        for row in rows:
            if not owned(missing, row.tenant_id, row.id):
                continue
            entry = EncodedContent.of(bytes(row.content))
            found[row.tenant_id, row.id] = entry
            self._keep((row.tenant_id, row.id), entry)
            self.loads += 1
        return found

    def _keep(self, key: RowKey, entry: EncodedContent) -> None:
        with self._lock:
            if key in self._entries or entry.cost > self._max:
                return
            self._entries[key] = entry
            self._size += entry.cost
            while self._size > self._max:
                _, dropped = self._entries.popitem(last=False)
                self._size -= dropped.cost


@dataclass(frozen=True, slots=True)
class Extras:
    """What a message carries besides its content, decided (the most specific source wins)."""

    reply_to: str | None
    headers: tuple[tuple[str, str], ...]
    attachments: tuple[dict[str, Any], ...]  # references: id, filename, content_type, size
    #: A campaign test send: {"campaign_id", "contact_id"} (services/campaign_tests.py).
    test: Mapping[str, Any] | None


def decide(*sources: Mapping[str, Any] | None) -> Extras | None:
    """The extras of ``sources``, least specific first (template, campaign, message); None when
    none gives any (almost every message: nothing more to do for it)."""
    given = [s for s in sources if s]
    if not given:
        return None
    reply_to = None
    headers: dict[str, tuple[str, str]] = {}
    attachments: list[dict[str, Any]] = []
    test = None
    for source in given:
        reply_to = source.get("reply_to") or reply_to
        for name, value in source.get("headers", ()):
            headers[name.lower()] = (name, value)
        if source.get("attachments"):
            attachments = list(source["attachments"])
        test = source.get("test") or test
    return Extras(
        reply_to=reply_to,
        headers=tuple(headers.values()),
        attachments=tuple(attachments),
        test=test,
    )


def references(tenant_id: int, sources: Iterable[Mapping[str, Any] | None]) -> set[RowKey]:
    """The attachments ``sources`` name, keyed by their tenant."""
    return {(tenant_id, int(a["id"])) for s in sources if s for a in s.get("attachments", ())}


def attachments_of(
    extras: Extras, tenant_id: int, contents: Mapping[RowKey, EncodedContent]
) -> tuple[Attachment, ...]:
    """The message's files, pointing at the shared encoded contents; raises ``TidingsError``
    (a permanent failure) when one is gone or is not the tenant's."""
    files = []
    for reference in extras.attachments:
        content = contents.get((tenant_id, int(reference["id"])))
        if content is None:
            raise TidingsError(f"its attachment {reference['filename']!r} is missing")
        files.append(
            Attachment(
                filename=reference["filename"],
                content_type=reference["content_type"],
                content_base64=content.content_base64,
                mime_body=content.mime_body,
            )
        )
    return tuple(files)
