"""FastAPI dependencies as ``Annotated`` aliases, so a handler's signature reads like a sentence."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tidings.domain import Role
from tidings.errors import PermissionDenied, Unauthenticated
from tidings.runtime import Runtime
from tidings.services.tenants import Principal, authenticate


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent (``scope="function"``)."""
    with runtime.sessions() as session, session.begin():
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_now(runtime: RuntimeDep) -> datetime:
    return runtime.clock.now()


NowDep = Annotated[datetime, Depends(get_now)]


def get_principal(request: Request, session: SessionDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated()
    return authenticate(session=session, secret=secret.strip())


def require(role: Role) -> Callable[[Principal], Principal]:
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.role.allows(role):
            raise PermissionDenied(f"this needs a key with the {role.value} role")
        return principal

    return check


ViewerDep = Annotated[Principal, Depends(require(Role.viewer))]
SenderDep = Annotated[Principal, Depends(require(Role.sender))]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]
