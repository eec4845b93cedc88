"""Per-tenant transport selection: one ``Transport`` the worker talks to, which sends each message
of a batch through its tenant's own transports, or through the process's default when the tenant
has none.

A tenant's transports form levels by ``priority`` (1 first). Within a level, messages are shared by
``weight`` (smooth weighted round robin, so 3:1 is 3:1 even over a few messages). A message that a
transport answers with a connection error or a 4xx reply (``Transient``, not a throttle reply: that
asks for less speed, not another relay) is offered to the level's other transports, then to the
next level's, within the same call: a relay dying mid-campaign delays nothing. A message the server
may have accepted (the answer to its final dot was lost, ``Transient.may_have_arrived``) or did
accept (``Sent``) is never offered to another transport: that would be a duplicate.

A transport whose every message failed over ``UNHEALTHY_AFTER`` times in a row is marked unhealthy
(persisted through the ``RouteDirectory``, so every worker, the API and the dashboard see it) and
is left out, except for one probe after an exponential back-off; a probe or a test that succeeds
makes it healthy again. Transports open lazily, per process, and the tenant's list is re-read
every ``ROUTES_TTL`` seconds, so an API change takes effect without a restart; a removed
transport is closed.

The VERP return path is set here too: it is the envelope, which is the transport's business.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from tidings.bounces.identify import verp_address
from tidings.domain.message import Outcome, OutgoingMessage, Sent, Transient
from tidings.errors import ConfigurationError, TidingsError
from tidings.transports.base import Abandoned, Transport

log = logging.getLogger("tidings.transports")

ROUTES_TTL = 5.0  # seconds a tenant's transport list is trusted before it is read again
UNHEALTHY_AFTER = 3  # failed calls in a row that mark a transport unhealthy
PROBE_BASE_SECONDS = 30.0  # first wait before an unhealthy transport is tried again; doubling
PROBE_MAX_SECONDS = 1800.0  # the longest wait between two probes
#: The local part of a VERP return path: ``bounces+m<id>.<hmac>@<bounce domain>``.
VERP_LOCAL_PART = "bounces"

Result = Outcome | Abandoned | None
#: Sends a batch through one transport: ``send``, or ``send_at`` with the caller's slot.
Call = Callable[[Transport, Sequence[OutgoingMessage]], Awaitable[Sequence[Result]]]


@dataclass(frozen=True, slots=True)
class Route:
    """One of a tenant's transports, as stored (URL unsealed)."""

    id: int
    tenant_id: int
    name: str
    url: str  # with its credentials: never logged (``masked`` is)
    masked: str
    priority: int
    weight: int
    healthy: bool = True
    failures: int = 0  # failed calls in a row
    probe_in: float = 0.0  # seconds from now until an unhealthy one may be probed
    #: Why it cannot be used at all (its URL cannot be unsealed): every call fails over.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TenantRoutes:
    routes: tuple[Route, ...] = ()  # empty: the default transport
    bounce_domain: str | None = None


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    failures: int
    probe_in: float  # seconds; 0 when healthy


def probe_delay(failures: int) -> float:
    """Seconds before an unhealthy transport's next probe: doubling from ``PROBE_BASE_SECONDS``
    with each failure past ``UNHEALTHY_AFTER``, at most ``PROBE_MAX_SECONDS``."""
    exponent = max(0, failures - UNHEALTHY_AFTER)
    return min(PROBE_MAX_SECONDS, PROBE_BASE_SECONDS * float(2 ** min(exponent, 30)))


class RouteDirectory(Protocol):
    """Where the router reads tenants' transports and writes their health (blocking calls: the
    router runs them in a thread). ``delivery/tenant_transports.py`` is the database one."""

    def load(self, tenant_ids: Collection[int]) -> dict[int, TenantRoutes]:
        """Every asked tenant's routes (a tenant with none may be left out)."""
        ...

    def record_failure(self, route: Route, reason: str) -> Health:
        """One more failed call; marks the route unhealthy after ``UNHEALTHY_AFTER`` in a row."""
        ...

    def record_success(self, route: Route) -> Health:
        """A call went through: healthy, no failures."""
        ...


def can_fail_over(outcome: Result) -> bool:
    """True for a refusal another transport might not give, and that cannot have delivered."""
    return isinstance(outcome, Transient) and not outcome.throttled and not outcome.may_have_arrived


@dataclass(slots=True)
class _Tenant:
    routes: TenantRoutes
    loaded_at: float  # monotonic
    turns: dict[int, float] = field(default_factory=dict)  # smooth WRR state, by route id


@dataclass(slots=True)
class _State:
    """What this process knows of a route's health between two reads of the directory."""

    healthy: bool
    failures: int
    probe_at: float  # monotonic; an unhealthy route is left out until then


class RoutingTransport:
    """Routes each message to its tenant's transports (with failover), or to ``default``."""

    def __init__(
        self,
        *,
        default: Transport,
        directory: RouteDirectory,
        opener: Callable[[str], Transport],
        secret_key: str,
        guard: Callable[[str], Awaitable[None]] | None = None,
        ttl: float = ROUTES_TTL,
    ) -> None:
        self.default = default
        self._directory = directory
        self._opener = opener
        self._guard = guard  # re-checks a URL's host before it is opened (SSRF)
        self._secret = secret_key
        self._ttl = ttl
        self._tenants: dict[int, _Tenant] = {}
        self._states: dict[int, _State] = {}
        self._open: dict[int, tuple[str, Transport]] = {}  # route id -> (url, transport)
        self._refreshing = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None  # a refresh of stale tenants

    # -- the port ----------------------------------------------------------------------------------

    @property
    def lead(self) -> float:
        return max([self.default.lead, *(t.lead for _, t in self._open.values())])

    async def send(self, batch: Sequence[OutgoingMessage]) -> list[Outcome]:
        async def call(transport: Transport, part: Sequence[OutgoingMessage]) -> list[Result]:
            return list(await transport.send(part))

        results = await self._route(batch, call)
        # With no start time, nothing can be missed or abandoned; never lose a message's place.
        return [
            r if r is not None and not isinstance(r, Abandoned) else Transient("not sent")
            for r in results
        ]

    async def send_at(
        self,
        batch: Sequence[OutgoingMessage],
        *,
        at: float,
        by: float,
        lead: float | None = None,
    ) -> list[Outcome | Abandoned | None]:
        async def call(transport: Transport, part: Sequence[OutgoingMessage]) -> list[Result]:
            # A message failed over after ``by`` comes back None: unsent, its slot given back.
            return list(await transport.send_at(part, at=at, by=by, lead=lead))

        return await self._route(batch, call)

    async def prepare(self, count: int) -> None:
        await asyncio.gather(
            self.default.prepare(count), *(t.prepare(count) for _, t in self._open.values())
        )

    async def close(self) -> None:
        if self._background is not None:
            await asyncio.gather(self._background, return_exceptions=True)
        opened, self._open = list(self._open.values()), {}
        await asyncio.gather(
            self.default.close(), *(t.close() for _, t in opened), return_exceptions=True
        )

    # -- routing -----------------------------------------------------------------------------------

    async def _route(self, batch: Sequence[OutgoingMessage], call: Call) -> list[Result]:
        tenants = await self._tenants_of({m.tenant_id for m in batch})
        results: list[Result] = [None] * len(batch)
        by_tenant: dict[int, list[tuple[int, OutgoingMessage]]] = {}
        default: list[tuple[int, OutgoingMessage]] = []
        for index, message in enumerate(batch):
            routes = tenants[message.tenant_id].routes
            if routes.bounce_domain:
                message = replace(
                    message,
                    return_path=verp_address(
                        self._secret,
                        f"{VERP_LOCAL_PART}@{routes.bounce_domain}",
                        message.message_id,
                    ),
                )
            if routes.routes:
                by_tenant.setdefault(message.tenant_id, []).append((index, message))
            else:
                default.append((index, message))

        async def through_default() -> None:
            if default:
                outcomes = await call(self.default, [m for _, m in default])
                for (index, _), outcome in zip(default, outcomes, strict=True):
                    results[index] = outcome

        await asyncio.gather(
            through_default(),
            *(
                self._send_tenant(tenants[t], pending, call, results)
                for t, pending in by_tenant.items()
            ),
        )
        return results

    async def _send_tenant(
        self,
        tenant: _Tenant,
        pending: list[tuple[int, OutgoingMessage]],
        call: Call,
        results: list[Result],
    ) -> None:
        """Level by level (priority 1 first): each message goes to a usable route of the level it
        has not tried yet, by weight, until it gets an answer no other transport should change."""
        last: dict[int, Result] = {}
        for priority in sorted({r.priority for r in tenant.routes.routes}):
            level = [r for r in tenant.routes.routes if r.priority == priority]
            tried: dict[int, set[int]] = {index: set() for index, _ in pending}
            moving_on: list[tuple[int, OutgoingMessage]] = []
            while pending:
                usable = [r for r in level if self._usable(r)]
                # A probe claimed is a probe made: the first message that may go there does.
                probes = [r for r in usable if not self._state(r).healthy]
                groups: dict[int, list[tuple[int, OutgoingMessage]]] = {}
                for index, message in pending:
                    choices = [r for r in usable if r.id not in tried[index]]
                    if not choices:
                        moving_on.append((index, message))
                        continue
                    probe = next((r for r in probes if r in choices and r.id not in groups), None)
                    chosen = probe or self._pick(tenant, choices)
                    groups.setdefault(chosen.id, []).append((index, message))
                pending = []
                if not groups:
                    break
                routes = {r.id: r for r in level}
                answers = await asyncio.gather(
                    *(self._try(routes[rid], group, call) for rid, group in groups.items())
                )
                for rid, group, outcomes in zip(groups, groups.values(), answers, strict=True):
                    for (index, message), outcome in zip(group, outcomes, strict=True):
                        if can_fail_over(outcome):
                            last[index] = outcome
                            tried[index].add(rid)
                            pending.append((index, message))
                        else:
                            results[index] = outcome
            pending = moving_on
            if not pending:
                return
        for index, _ in pending:
            results[index] = last.get(index) or self._none_usable(tenant)

    async def _try(
        self, route: Route, group: list[tuple[int, OutgoingMessage]], call: Call
    ) -> Sequence[Result]:
        """One route's share of the batch; its answers feed the route's health."""
        try:
            transport = await self._transport(route)
            outcomes = await call(transport, [m for _, m in group])
        except TidingsError as exc:  # cannot be opened (a host now refused, an outbox unwritable)
            outcomes = [Transient(f"transport {route.name!r} cannot be used: {exc.message}")] * len(
                group
            )
        except Exception as exc:  # a bug in a transport must not lose the batch: fail over
            log.exception("transport %s failed", route.masked)
            outcomes = [Transient(f"transport {route.name!r} failed: {exc}")] * len(group)
        failed = [o for o in outcomes if can_fail_over(o)]
        state = self._state(route)
        if failed and len(failed) == len(outcomes):
            reason = failed[0].reason if isinstance(failed[0], Transient) else "failed"
            await self._record(route, self._directory.record_failure, route, reason)
        elif any(isinstance(o, Sent) for o in outcomes) and (
            not state.healthy or state.failures > 0
        ):
            await self._record(route, self._directory.record_success, route)
        return outcomes

    async def _record(self, route: Route, write: Callable[..., Health], *args: object) -> None:
        try:
            health = await asyncio.to_thread(write, *args)
        except Exception:  # health is advice; the outcome still gets recorded by the worker
            log.warning("could not record the health of transport %s", route.masked, exc_info=True)
            return
        if health.healthy != self._state(route).healthy:
            log.warning(
                "transport %s of tenant %d is now %s",
                route.masked,
                route.tenant_id,
                "healthy" if health.healthy else "unhealthy",
            )
        self._states[route.id] = _State(
            health.healthy, health.failures, time.monotonic() + health.probe_in
        )

    def _state(self, route: Route) -> _State:
        state = self._states.get(route.id)
        if state is None:
            state = self._states[route.id] = _State(
                route.healthy, route.failures, time.monotonic() + route.probe_in
            )
        return state

    def _usable(self, route: Route) -> bool:
        """Healthy, or unhealthy with its probe due: then this call is the probe, and the next
        ones wait (one probe at a time per process)."""
        state = self._state(route)
        if state.healthy:
            return True
        now = time.monotonic()
        if state.probe_at > now:
            return False
        state.probe_at = now + probe_delay(state.failures)
        return True

    def _none_usable(self, tenant: _Tenant) -> Transient:
        waits = [max(0.0, self._state(r).probe_at - time.monotonic()) for r in tenant.routes.routes]
        wait = min(waits, default=PROBE_BASE_SECONDS)
        return Transient(
            "every one of the tenant's transports is unhealthy; the next is probed in "
            f"{math.ceil(wait)} s",
            retry_after=wait,
        )

    @staticmethod
    def _pick(tenant: _Tenant, choices: list[Route]) -> Route:
        """Smooth weighted round robin (nginx's): each turn adds every choice's weight to its
        counter and takes the largest, which then pays the total back."""
        total = sum(r.weight for r in choices)
        for route in choices:
            tenant.turns[route.id] = tenant.turns.get(route.id, 0.0) + route.weight
        best = max(choices, key=lambda r: tenant.turns[r.id])
        tenant.turns[best.id] -= total
        return best

    # -- the routes and their transports -----------------------------------------------------------

    async def _tenants_of(self, tenant_ids: set[int]) -> dict[int, _Tenant]:
        """The tenants' routes. A tenant never read is read now; one read more than ``ttl`` ago
        is sent with what is known while it is read again beside the send: a send at a
        throttled slot must not wait for the database."""
        unknown = tenant_ids - set(self._tenants)
        if unknown:
            async with self._refreshing:
                unknown = tenant_ids - set(self._tenants)  # another batch may have read them
                if unknown:
                    await self._refresh(unknown)
        stale = self._stale(tenant_ids)
        if stale and self._background is None:
            self._background = asyncio.create_task(self._refresh_beside(stale))
        return {t: self._tenants[t] for t in tenant_ids}

    async def _refresh_beside(self, tenant_ids: set[int]) -> None:
        try:
            async with self._refreshing:
                await self._refresh(tenant_ids)
        except Exception:  # _refresh logged it; the next batch tries again
            pass
        finally:
            self._background = None

    def _stale(self, tenant_ids: set[int]) -> set[int]:
        now = time.monotonic()
        return {
            t
            for t in tenant_ids
            if (known := self._tenants.get(t)) is None or now - known.loaded_at >= self._ttl
        }

    async def _refresh(self, tenant_ids: set[int]) -> None:
        try:
            loaded = await asyncio.to_thread(self._directory.load, tenant_ids)
        except Exception:
            # Keep what we knew: a database hiccup must not send a tenant's mail elsewhere. A tenant
            # never read yet is retried at the next batch and waits meanwhile.
            log.warning("reading tenants' transports failed", exc_info=True)
            now = time.monotonic()
            for t in tenant_ids:
                if t in self._tenants:
                    self._tenants[t].loaded_at = now
            unknown = tenant_ids - set(self._tenants)
            if unknown:
                raise
            return
        now = time.monotonic()
        for t in tenant_ids:
            routes = loaded.get(t, TenantRoutes())
            previous = self._tenants.get(t)
            turns = previous.turns if previous is not None else {}
            self._tenants[t] = _Tenant(routes=routes, loaded_at=now, turns=turns)
            for route in routes.routes:  # the stored health is every process's knowledge
                self._states[route.id] = _State(
                    route.healthy, route.failures, self._merge_probe(route, now)
                )
            if previous is not None:
                await self._close_removed(previous.routes, routes)

    def _merge_probe(self, route: Route, now: float) -> float:
        known = self._states.get(route.id)
        probe_at = now + route.probe_in
        # A probe this process has claimed stays claimed.
        return (
            max(probe_at, known.probe_at) if known is not None and not known.healthy else probe_at
        )

    async def _close_removed(self, before: TenantRoutes, after: TenantRoutes) -> None:
        current = {r.id: r.url for r in after.routes}
        gone = [r.id for r in before.routes if current.get(r.id) != r.url]
        closing = [self._open.pop(rid)[1] for rid in gone if rid in self._open]
        for rid in gone:
            if rid not in current:
                self._states.pop(rid, None)
        if closing:
            await asyncio.gather(*(t.close() for t in closing), return_exceptions=True)

    async def _transport(self, route: Route) -> Transport:
        if route.error is not None:
            raise ConfigurationError(route.error)
        opened = self._open.get(route.id)
        if opened is not None and opened[0] == route.url:
            return opened[1]
        if self._guard is not None:
            await self._guard(route.url)
            opened = self._open.get(route.id)  # another batch may have opened it meanwhile
            if opened is not None and opened[0] == route.url:
                return opened[1]
        transport = self._opener(route.url)
        self._open[route.id] = (route.url, transport)
        if opened is not None:
            await opened[1].close()
        return transport
