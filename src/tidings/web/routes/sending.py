"""The Sending page: the tenant's sender domains with the DNS records to publish and their
verification status (as ``/v1/domains``), and, below them, the tenant's transports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from tidings.api.deps import NowDep, RuntimeDep, SessionDep
from tidings.api.schemas import IdPath
from tidings.errors import Conflict, InvalidInput
from tidings.services import domains, transports
from tidings.transports.dkim_sign import ALGORITHMS, RSA
from tidings.web.auth import AdminAction, UserDep, WebUser, show
from tidings.web.pages import DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


def _page(
    request: Request,
    user: WebUser,
    session: Session,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    runtime = request.app.state.runtime
    rows = domains.domains_of(session=session, tenant_id=user.tenant_id)
    return show(
        request,
        user,
        "sending.html",
        status_code=status_code,
        domains=[
            (
                row,
                domains.signs_mail(row),
                domains.dns_records(row, spf_include=runtime.settings.spf_include),
            )
            for row in rows
        ],
        algorithms=ALGORITHMS,
        values=values or {"domain": "", "algorithm": RSA},
        errors=errors or {},
        require_verified=runtime.settings.require_verified_from,
        transports=transports.transports_health(session=session, tenant_id=user.tenant_id),
    )


@router.get("/sending", response_class=HTMLResponse)
def sending_page(request: Request, user: UserDep, session: SessionDep) -> HTMLResponse:
    return _page(request, user, session)


@router.post("/sending/domains", response_class=HTMLResponse)
def add_domain(
    request: Request,
    user: AdminAction,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
    domain: Annotated[str, Form(max_length=300)] = "",
    algorithm: Annotated[str, Form(max_length=20)] = RSA,
) -> Response:
    try:
        row = domains.create_domain(
            session=session,
            tenant_id=user.tenant_id,
            domain=domain,
            algorithm=algorithm,
            secret_key=runtime.secret_key,
            now=now,
        )
    except (InvalidInput, Conflict) as exc:
        values = {"domain": domain, "algorithm": algorithm}
        errors = {exc.field or "domain": exc.message}
        return _page(request, user, session, values=values, errors=errors, status_code=422)
    return RedirectResponse(f"/sending?done=domain-added#domain-{row.id}", status_code=303)


@router.post("/sending/domains/{domain_id}/verify", response_class=HTMLResponse)
async def verify_domain(
    domain_id: IdPath, user: AdminAction, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> Response:
    """As ``POST /v1/domains/{id}/verify`` (one service function)."""
    await domains.verify(
        sessions=runtime.sessions,
        session=session,
        tenant_id=user.tenant_id,
        domain_id=domain_id,
        resolver_address=runtime.settings.dns_resolver,
        secret_key=runtime.secret_key,
        now=now,
    )
    return RedirectResponse(f"/sending?done=domain-checked#domain-{domain_id}", status_code=303)


@router.post("/sending/domains/{domain_id}/rotate", response_class=HTMLResponse)
def rotate_domain(
    domain_id: IdPath, user: AdminAction, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> Response:
    domains.rotate_domain(
        session=session,
        tenant_id=user.tenant_id,
        domain_id=domain_id,
        algorithm=None,
        secret_key=runtime.secret_key,
        now=now,
    )
    return RedirectResponse(f"/sending?done=domain-rotated#domain-{domain_id}", status_code=303)


@router.post("/sending/domains/{domain_id}/delete", response_class=HTMLResponse)
def delete_domain(domain_id: IdPath, user: AdminAction, session: SessionDep) -> Response:
    domains.delete_domain(session=session, tenant_id=user.tenant_id, domain_id=domain_id)
    return RedirectResponse("/sending?done=domain-deleted", status_code=303)


@router.post("/sending/transports/{transport_id}/test")
async def test_transport(
    transport_id: IdPath, user: AdminAction, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> Response:
    """Connect and say hello, as ``POST /v1/transports/{id}/test``; the answer of a failed test
    shows in the table (its last error), and it counts as a health probe."""
    result, _ = await transports.test_transport(
        session=session,
        settings=runtime.settings,
        secret_key=runtime.secret_key,
        tenant_id=user.tenant_id,
        transport_id=transport_id,
        now=now,
    )
    done = "transport-answered" if result.ok else "transport-failed"
    return RedirectResponse(f"/sending?done={done}#transports", status_code=303)
