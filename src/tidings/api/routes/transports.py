"""``/v1/transports``: the tenant's own sending accounts (SMTP relays, Resend keys), with failover.

A tenant with any sends only through them, priority 1 first, shared by weight within a priority;
one without sends through the service's ``TIDINGS_TRANSPORT_URL``. Credentials go in once and are
never returned: every answer shows the URL with its password or API key masked.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from tidings.api.deps import AdminDep, KeyFirstRoute, NowDep, RuntimeDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, IdPath, PageOut, StrictModel
from tidings.db.models import TenantTransport
from tidings.services import transports
from tidings.transports.tenant_urls import MAX_URL_LENGTH

router = APIRouter(
    prefix="/v1/transports",
    tags=["transports"],
    responses=ERROR_RESPONSES,
    route_class=KeyFirstRoute,
)


class TransportIn(StrictModel):
    name: str = Field(min_length=1, max_length=200, examples=["school relay"])
    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="smtp://user:pass@host:587?tls=starttls, smtps://…, resend://KEY[@host], or "
        "outbox:///<data dir>/tenant-outboxes/<tenant id>/…; the host must be public.",
        examples=["smtp://user:pass@smtp.example.com:587?tls=starttls"],
    )
    priority: int = Field(1, ge=1, le=transports.MAX_PRIORITY, description="1 is tried first.")
    weight: int = Field(
        1, ge=1, le=transports.MAX_WEIGHT, description="Share of its priority's mail."
    )


class TransportOut(BaseModel):
    id: int
    name: str
    url: str = Field(description="The URL with its password or API key masked (****).")
    priority: int
    weight: int
    healthy: bool = Field(description="False after repeated failures, until a probe succeeds.")
    failures: int = Field(description="Failed calls in a row.")
    last_error: str | None
    last_checked_at: datetime | None
    next_probe_at: datetime | None = Field(description="When an unhealthy one is tried again.")
    created_at: datetime

    @classmethod
    def of(cls, row: TenantTransport) -> TransportOut:
        return cls(
            id=row.id,
            name=row.name,
            url=row.url_masked,
            priority=row.priority,
            weight=row.weight,
            healthy=row.healthy,
            failures=row.failures,
            last_error=row.last_error,
            last_checked_at=row.last_checked_at,
            next_probe_at=None if row.healthy else row.next_probe_at,
            created_at=row.created_at,
        )


class TestOut(BaseModel):
    ok: bool
    answer: str = Field(description="The server's answer (SMTP greeting and EHLO), or the error.")
    latency_ms: float
    checked: str = Field(description="What was tried: connect, EHLO, STARTTLS, AUTH …")
    transport: TransportOut


@router.get("")
def list_transports(principal: ViewerDep, session: SessionDep) -> PageOut[TransportOut]:
    """In the order they are tried (at most ``MAX_TRANSPORTS_PER_TENANT``, so one page)."""
    rows = transports.list_transports(session=session, tenant_id=principal.tenant_id)
    return PageOut(items=[TransportOut.of(r) for r in rows], next_cursor=None)


@router.post("", status_code=201)
def create_transport(
    body: TransportIn, principal: AdminDep, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> TransportOut:
    row = transports.create_transport(
        session=session,
        tenant_id=principal.tenant_id,
        name=body.name,
        url=body.url,
        priority=body.priority,
        weight=body.weight,
        settings=runtime.settings,
        secret_key=runtime.secret_key,
        now=now,
    )
    return TransportOut.of(row)


@router.get("/{transport_id}")
def get_transport(transport_id: IdPath, principal: ViewerDep, session: SessionDep) -> TransportOut:
    return TransportOut.of(
        transports.get_transport(
            session=session, tenant_id=principal.tenant_id, transport_id=transport_id
        )
    )


@router.delete("/{transport_id}", status_code=204)
def delete_transport(transport_id: IdPath, principal: AdminDep, session: SessionDep) -> Response:
    transports.delete_transport(
        session=session, tenant_id=principal.tenant_id, transport_id=transport_id
    )
    return Response(status_code=204)


@router.post("/{transport_id}/test")
async def test_transport(
    transport_id: IdPath,
    principal: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
) -> TestOut:
    """Connects and says hello (SMTP: connect, TLS, EHLO, AUTH; Resend: an authenticated read),
    sends nothing, and reports the answer and how long it took. Counts as a health probe."""
    result, row = await transports.test_transport(
        session=session,
        settings=runtime.settings,
        secret_key=runtime.secret_key,
        tenant_id=principal.tenant_id,
        transport_id=transport_id,
        now=now,
    )
    return TestOut(
        ok=result.ok,
        answer=result.answer,
        latency_ms=round(result.latency_ms, 1),
        checked=result.checked,
        transport=TransportOut.of(row),
    )
