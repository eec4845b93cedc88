"""What matching erased addresses costs the send-time screen: the claim of a batch with and
without the erasure key, alternately, on each database.

Seeds N queued messages and 1,000 hashed (erased) suppressions, then claims batches of 100 (each
claim runs ``screen_claimed``), alternating with and without ``address_key``, and prints the median
claim. The fan-out is not measured: its code does not change (an erased address that comes back
is turned into a plain suppression at import or upsert, which the fan-out's join sees as any
other). Prints figures; asserts nothing.

    python bench/bench_erased_screen.py [--messages 20000] [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from databases import postgres_database, sqlite_database
from sqlalchemy import insert, update

from tidings.address_hash import address_key
from tidings.db.engine import make_engine, make_session_factory, transaction, upgrade
from tidings.db.models import Message, Suppression, Tenant
from tidings.queue.claim import claim_batch

BATCH = 100  # messages per claim
ERASED = 1_000  # hashed suppressions of the tenant


def run(url: str, messages: int, rounds: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC) - timedelta(seconds=5)
    with engine.begin() as connection:
        connection.execute(insert(Tenant).values(name="t", created_at=now))
        connection.execute(
            insert(Message),
            [
                {
                    "tenant_id": 1,
                    "to_address": f"p{i}@example.com",
                    "status": "queued",
                    "priority": 5,
                    "attempts": 0,
                    "lease_expiries": 0,
                    "not_before": now,
                    "expires_at": now + timedelta(days=1),
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(messages)
            ],
        )
        connection.execute(
            insert(Suppression),
            [
                {"tenant_id": 1, "email": f"erased:{i:064x}", "reason": "manual", "created_at": now}
                for i in range(ERASED)
            ],
        )
    key = address_key("x" * 40)
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, given in (("with the key", key), ("without", None)):
            started = time.perf_counter()
            with transaction(sessions) as session:
                claim = claim_batch(
                    session=session, owner="w", limit=BATCH, lease_seconds=30, address_key=given
                )
                session.execute(
                    update(Message)
                    .where(Message.id.in_([m.id for m in claim.messages]))
                    .values(status="sent")
                )
            results.setdefault(label, []).append(time.perf_counter() - started)
    for label, times in results.items():
        print(f"  claim of {BATCH}, {label}: median {statistics.median(times) * 1000:.2f} ms")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with sqlite_database() as url:
        print("SQLite")
        run(url, args.messages, args.rounds)
    with postgres_database(purpose="screen") as url:
        print("PostgreSQL")
        run(url, args.messages, args.rounds)


if __name__ == "__main__":
    main()
