"""``/v1/keys``: an admin creates, lists (prefix only) and revokes the tenant's API keys."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tidings.api.deps import AdminDep, KeyFirstRoute, NowDep, RuntimeDep, SessionDep
from tidings.api.schemas import ERROR_RESPONSES, IdPath, PageOut, StrictModel
from tidings.db.models import ApiKey
from tidings.domain import Role
from tidings.services import tenants
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)


class KeyIn(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.sender


class KeyOut(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            name=key.name,
            role=Role(key.role),
            prefix=key.prefix,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class NewKeyOut(KeyOut):
    key: str = Field(description="The whole key. It is shown only this once.")


@router.get("")
def list_keys(
    principal: AdminDep,
    session: SessionDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[KeyOut]:
    page = tenants.list_keys(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    return PageOut(items=[KeyOut.of(k) for k in page.items], next_cursor=page.next_cursor)


@router.post("", status_code=201)
def create_key(body: KeyIn, principal: AdminDep, session: SessionDep, now: NowDep) -> NewKeyOut:
    issued = tenants.create_key(
        session=session, tenant_id=principal.tenant_id, name=body.name, role=body.role, now=now
    )
    return NewKeyOut(**KeyOut.of(issued.key).model_dump(), key=issued.secret)


@router.delete("/{key_id}")
def revoke_key(
    key_id: IdPath, principal: AdminDep, session: SessionDep, now: NowDep, runtime: RuntimeDep
) -> KeyOut:
    key = tenants.revoke_key(session=session, tenant_id=principal.tenant_id, key_id=key_id, now=now)
    runtime.principals.forget(key.id)  # refused here at once; elsewhere within its cache time
    return KeyOut.of(key)
