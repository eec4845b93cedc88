"""FastAPI dependencies as ``Annotated`` aliases, so a handler's signature reads like a sentence."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import cached_property
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from tidings.db.engine import POOL_OVERFLOW, POOL_SIZE
from tidings.domain import Role
from tidings.errors import PermissionDenied, Unauthenticated
from tidings.runtime import Runtime
from tidings.services.tenants import Principal, authenticate

# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the
# thread pool, and each such hop costs more CPU than the work it does.


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


#: Requests holding a database session at once, per process. FastAPI runs each sync dependency
#: and the handler in separate thread-pool hops, and a request keeps its pooled connection between
#: hops. Unbounded, all 40 threads could wait for a connection while the requests holding every
#: connection wait for a thread: a deadlock that only the 30 s pool timeout breaks (measured at
#: 200 requests/s: 34 answered a second, the rest 503s). The bound is taken before any thread is,
#: below the pool's capacity, leaving connections for the embedded workers and the SSE streams.
REQUESTS_WITH_SESSION = POOL_SIZE + POOL_OVERFLOW - 10
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _gate() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:  # one per event loop: a semaphore belongs to the loop it first waits on
        gate = _gates[loop] = asyncio.Semaphore(REQUESTS_WITH_SESSION)
    return gate


async def get_session(runtime: RuntimeDep) -> AsyncIterator[Session]:
    """One transaction per request, committed before the response is sent (``scope="function"``).

    Async, though the session is not: opening one does no I/O (the transaction begins at the
    first statement, in the handler's thread), so only the commit needs a thread-pool hop.
    """
    async with _gate(), _committed(runtime.sessions()) as session:
        yield session


@asynccontextmanager
async def _committed(session: Session) -> AsyncIterator[Session]:
    try:
        yield session
        await run_in_threadpool(session.commit)
    except BaseException:
        await run_in_threadpool(session.rollback)
        raise
    finally:
        session.close()  # no I/O: commit or rollback already gave the connection back


#: Set by the dashboard after each of its writes (``web/pages.py``): until the Unix time it holds,
#: this browser's reads go to the primary, so that the page an action redirects to, and the next
#: few, show the action's effect however the replica lags; then the replica again.
READ_PRIMARY_COOKIE = "tidings_read_primary"
READ_PRIMARY_SECONDS = 30


def read_primary_until(request: Request) -> float:
    """Until when this client's reads go to the primary (its ``READ_PRIMARY_COOKIE``), or 0."""
    value = request.cookies.get(READ_PRIMARY_COOKIE, "")
    return float(value) if value.isdigit() and len(value) <= 12 else 0.0


def wants_primary(request: Request, now: datetime) -> bool:
    """Whether this request's reads must see the primary: shortly after a dashboard write, or
    when the client asks for a fresh answer (``Cache-Control: no-cache``: an API client that
    reads what it has just written, or a browser's forced reload)."""
    if now.timestamp() < read_primary_until(request):
        return True
    return "no-cache" in request.headers.get("cache-control", "").lower()


async def get_read_session(request: Request, runtime: RuntimeDep) -> AsyncIterator[Session]:
    """``get_session`` for handlers that only read and may answer a little behind the primary
    (dashboard pages, campaign status): on the read replica when one is configured.

    Connecting to the replica is I/O, done here on a thread before the handler runs, so that a
    replica that is down is known in time to read the primary instead (``db/replica.py``).
    """
    async with _gate():
        if runtime.replica is None or wants_primary(request, runtime.clock.now()):
            session = runtime.sessions()
        else:
            session = await run_in_threadpool(runtime.read_session)
        async with _committed(session) as read:
            yield read


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
#: Only for a handler that writes nothing, whose answer may lag the primary by the replica's lag.
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]


async def get_now(runtime: RuntimeDep) -> datetime:
    return runtime.clock.now()


NowDep = Annotated[datetime, Depends(get_now)]


#: Where a request keeps its principal once authenticated, so that it is looked up once.
PRINCIPAL_SCOPE_KEY = "tidings.principal"


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller's principal, authenticated once per request: by ``KeyFirstRoute`` before the
    body is read, on any route whose dependencies ask for it."""
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None:
        principal = await _principal_of(request, runtime)
        request.scope[PRINCIPAL_SCOPE_KEY] = principal
    return principal


async def _principal_of(request: Request, runtime: Runtime) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthenticated()
    principal = runtime.principals.get(secret)
    if principal is None:
        principal = await run_in_threadpool(_authenticate, runtime, secret)
        runtime.principals.put(secret, principal)
    return principal


def _authenticate(runtime: Runtime, secret: str) -> Principal:
    """In a transaction of its own, ended at once, not the request's: on SQLite every transaction
    holds the write lock (BEGIN IMMEDIATE), and the request's may not need to begin until much
    later (an import reads its whole upload first)."""
    with runtime.sessions() as session, session.begin():
        return authenticate(session=session, secret=secret)


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.role.allows(role):
            raise PermissionDenied(f"this needs a key with the {role.value} role")
        return principal

    return check


ViewerDep = Annotated[Principal, Depends(require(Role.viewer))]
SenderDep = Annotated[Principal, Depends(require(Role.sender))]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]


def depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    """Whether ``call`` is among the dependencies of ``dependant``, at any depth."""
    return call in _calls(dependant)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


class KeyFirstRoute(APIRoute):
    """A route that checks the caller's API key before anything reads the request body.

    FastAPI reads and parses a body before it solves any dependency, so a route whose key check
    is only a dependency lets a client without a key make the process read a body up to its cap.
    Every router of the API uses this class (``route_class``); a test checks it.
    """

    @cached_property
    def needs_key(self) -> bool:
        return depends_on(self.dependant, get_principal)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.needs_key and scope["type"] == "http":
            # Raises Unauthenticated (401) with not a byte of the body read; the principal is
            # kept in the scope for the route's own dependencies.
            await get_principal(Request(scope, receive), scope["app"].state.runtime)
        await super().handle(scope, receive, send)
