"""What adaptive per-domain rates cost the claim: a batch of 100 messages to 50 domains, claimed
and released again, with no domain slowed down, with 1,000 other domains slowed down, and with one
of the claimed domains held to a rate; and, for reference, with the ``domain_rates`` look-up taken
out. Prints milliseconds per claim (median of the runs); asserts nothing about time.

    python bench/bench_adaptive_claim.py [--runs 300] [--pg postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from databases import PG_ADMIN_URL, postgres_database, sqlite_database
from sqlalchemy import insert, update

from tidings.db.engine import make_engine, make_session_factory, transaction, upgrade
from tidings.db.models import DomainRate, Message, Tenant
from tidings.queue import claim as claim_module
from tidings.queue.claim import claim_batch

BATCH = 100  # messages per claim
DOMAINS = 50  # recipient domains among them
OTHER_RATES = 1_000  # slowed-down domains the batch does not send to


def seed(sessions: Any) -> int:
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        tenant = Tenant(name="bench", created_at=now)
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
        session.execute(
            insert(Message),
            [
                {
                    "tenant_id": tenant_id,
                    "to_address": f"r{i}@d{i % DOMAINS}.test",
                    "subject": "s",
                    "text": "t",
                    "priority": 5,
                    "status": "queued",
                    "not_before": now - timedelta(seconds=1),
                    "expires_at": now + timedelta(days=1),
                    "attempts": 0,
                    "lease_expiries": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(BATCH)
            ],
        )
    return tenant_id


def add_rates(sessions: Any, tenant_id: int, domains: list[str], *, rate: float) -> None:
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        session.execute(
            insert(DomainRate),
            [
                {
                    "tenant_id": tenant_id,
                    "domain": domain,
                    "rate": rate,
                    "state": "probing",
                    "successes": 0,
                    "slowed_from": rate,
                    "last_slowdown_at": now.timestamp(),
                    "tat": 0.0,
                    "paused_until": 0.0,
                    "updated_at": now,
                }
                for domain in domains
            ],
        )


def claim_once(sessions: Any) -> float:
    """Seconds of one claim of the whole batch, which is then released again."""
    with transaction(sessions) as session:  # the held domain's next slot has come
        session.execute(update(DomainRate).where(DomainRate.domain == "d0.test").values(tat=0.0))
    started = time.perf_counter()
    with transaction(sessions) as session:
        claim_batch(session=session, owner="bench", limit=BATCH, lease_seconds=30)
    took = time.perf_counter() - started
    with transaction(sessions) as session:
        session.execute(
            update(Message).values(
                status="queued",
                not_before=datetime.now(UTC) - timedelta(seconds=1),
                lease_token=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
    return took


def time_claims(sessions: Any, runs: int) -> tuple[float, float]:
    """Median milliseconds of a claim without the ``domain_rates`` look-up and with it,
    interleaved so that both see the same table bloat and the same machine."""
    without: list[float] = []
    with_it: list[float] = []
    for _ in range(runs):
        with without_rate_lookup():
            without.append(claim_once(sessions))
        with_it.append(claim_once(sessions))
    return statistics.median(without) * 1000, statistics.median(with_it) * 1000


@contextmanager
def without_rate_lookup() -> Iterator[None]:
    original: Callable[..., Any] = claim_module.lock_limiting_rates
    claim_module.lock_limiting_rates = lambda *_, **__: {}  # type: ignore[assignment]
    try:
        yield
    finally:
        claim_module.lock_limiting_rates = original  # type: ignore[assignment]


def run(name: str, url: str, runs: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    tenant_id = seed(sessions)
    time_claims(sessions, 20)  # warm up
    figures = [("no domain slowed", time_claims(sessions, runs))]
    add_rates(sessions, tenant_id, [f"other{i}.test" for i in range(OTHER_RATES)], rate=5.0)
    figures.append((f"{OTHER_RATES} other domains slowed", time_claims(sessions, runs)))
    add_rates(sessions, tenant_id, ["d0.test"], rate=1000.0)
    figures.append(("one claimed domain held to a rate", time_claims(sessions, runs)))
    engine.dispose()
    for what, (without, with_it) in figures:
        print(
            f"{name:10} claim of {BATCH} to {DOMAINS} domains, {what}: {with_it:.2f} ms"
            f" ({without:.2f} ms without the domain_rates look-up)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--pg", default=PG_ADMIN_URL)
    args = parser.parse_args()
    with sqlite_database() as url:
        run("SQLite", url, args.runs)
    with postgres_database(args.pg, purpose="adaptive") as url:
        run("PostgreSQL", url, args.runs)


if __name__ == "__main__":
    main()
