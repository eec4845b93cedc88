"""``/v1/domains``: the tenant's sender domains, the DNS records to publish, verification and DKIM
key rotation. Admins change them; any key reads them (the records are public by nature)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from tidings.api.deps import AdminDep, KeyFirstRoute, NowDep, RuntimeDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, IdPath, PageOut, StrictModel
from tidings.db.models import SenderDomain
from tidings.runtime import Runtime
from tidings.services import domains
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/domains", tags=["domains"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]


class DomainIn(StrictModel):
    domain: str = Field(min_length=1, max_length=300, examples=["mail.example.com"])
    algorithm: Algorithm = Field("rsa-sha256", description="RSA-2048 (default) or Ed25519")


class RotateIn(StrictModel):
    algorithm: Algorithm | None = Field(None, description="default: the current key's algorithm")


class DnsRecordOut(BaseModel):
    purpose: str = Field(description="dkim, dkim-previous, spf or dmarc")
    type: str
    name: str
    value: str
    strings: list[str] = Field(description="the value as TXT character-strings of <= 255 octets")
    required: bool
    note: str


class DomainOut(BaseModel):
    id: int
    domain: str
    algorithm: str
    selector: str
    status: Literal["pending", "verified", "failed"]
    reason: str | None = Field(description="why verification failed")
    signing: bool = Field(
        description="mail from this domain is DKIM-signed now (verified, or rotating from a "
        "verified key)"
    )
    dns_records: list[DnsRecordOut]
    verified_at: datetime | None
    checked_at: datetime | None
    created_at: datetime
    rotated_at: datetime | None

    @classmethod
    def of(cls, row: SenderDomain, runtime: Runtime) -> DomainOut:
        records = domains.dns_records(row, spf_include=runtime.settings.spf_include)
        return cls(
            id=row.id,
            domain=row.domain,
            algorithm=row.algorithm,
            selector=row.selector,
            status=row.status,
            reason=row.reason,
            signing=domains.signs_mail(row),
            dns_records=[DnsRecordOut(**domains.record_fields(r)) for r in records],
            verified_at=row.verified_at,
            checked_at=row.checked_at,
            created_at=row.created_at,
            rotated_at=row.rotated_at,
        )


class VerificationOut(DomainOut):
    advice: list[str] = Field(description="SPF and DMARC findings; they never fail a domain")


@router.get("")
def list_domains(
    principal: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(None, pattern=r"^[0-9]{0,19}$"),
) -> PageOut[DomainOut]:
    page = domains.list_domains(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    return PageOut(
        items=[DomainOut.of(d, runtime) for d in page.items], next_cursor=page.next_cursor
    )


@router.post("", status_code=201)
def create_domain(
    body: DomainIn, principal: AdminDep, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> DomainOut:
    """A new key pair and selector; publish the answer's ``dns_records``, then verify."""
    row = domains.create_domain(
        session=session,
        tenant_id=principal.tenant_id,
        domain=body.domain,
        algorithm=body.algorithm,
        secret_key=runtime.secret_key,
        now=now,
    )
    return DomainOut.of(row, runtime)


@router.get("/{domain_id}")
def get_domain(
    domain_id: IdPath, principal: ViewerDep, session: SessionDep, runtime: RuntimeDep
) -> DomainOut:
    row = domains.get_domain(session=session, tenant_id=principal.tenant_id, domain_id=domain_id)
    return DomainOut.of(row, runtime)


@router.delete("/{domain_id}", status_code=204)
def delete_domain(domain_id: IdPath, principal: AdminDep, session: SessionDep) -> Response:
    domains.delete_domain(session=session, tenant_id=principal.tenant_id, domain_id=domain_id)
    return Response(status_code=204)


@router.post("/{domain_id}/verify")
async def verify_domain(
    domain_id: IdPath, principal: AdminDep, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> VerificationOut:
    """Looks the DKIM record up (``TIDINGS_DNS_RESOLVER``) and checks that a verifier accepts
    this domain's signatures with it: ``verified``, or ``failed`` with the ``reason``."""

    row, findings = await domains.verify(
        sessions=runtime.sessions,
        session=session,
        tenant_id=principal.tenant_id,
        domain_id=domain_id,
        resolver_address=runtime.settings.dns_resolver,
        secret_key=runtime.secret_key,
        now=now,
    )
    return VerificationOut(**DomainOut.of(row, runtime).model_dump(), advice=findings.advice)


@router.post("/{domain_id}/rotate")
def rotate_domain(
    domain_id: IdPath,
    principal: AdminDep,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
    body: RotateIn | None = None,
) -> DomainOut:
    """A new key and selector, ``pending`` until its record verifies; mail goes on being signed
    with the previous key meanwhile if it was verified, and that key stays (publish both records)
    until the next rotation."""
    row = domains.rotate_domain(
        session=session,
        tenant_id=principal.tenant_id,
        domain_id=domain_id,
        algorithm=body.algorithm if body is not None else None,
        secret_key=runtime.secret_key,
        now=now,
    )
    return DomainOut.of(row, runtime)
