"""Contact export over HTTP: rows per second and the server's memory, on each database.

Seeds N contacts (with attributes, half of them in a list) in a throw-away database, starts
``tidings serve`` (API only) in its own process, and downloads ``GET /v1/contacts/export`` as CSV
and as JSON Lines with a streaming client that keeps nothing. The server's resident memory is
sampled every 20 ms while it streams: a flat export shows the same peak for N/10 contacts as for
N. The target is 1,000,000 contacts; prints figures, asserts nothing.

    python bench/bench_export.py [--contacts 200000] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from bench_import import serve
from databases import add_database_options, each_database
from sqlalchemy import insert, select, text

from tidings.db.engine import make_engine, make_session_factory, transaction, upgrade
from tidings.db.models import Contact, ContactList, ListMember
from tidings.domain import Role
from tidings.services import tenants

SEED_BATCH = 10_000  # rows per executemany while seeding
SAMPLE_SECONDS = 0.02  # how often the server's memory is read


def seed(url: str, count: int) -> tuple[str, int]:
    """A tenant with ``count`` contacts, every second one in a list: (a viewer key, the list id)."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        tenant, _ = tenants.create_tenant(session=session, name="bench", now=now)
        viewer = tenants.create_key(
            session=session, tenant_id=tenant.id, name="v", role=Role.viewer, now=now
        )
        news = ContactList(tenant_id=tenant.id, name="news", created_at=now)
        session.add(news)
        session.flush()
        tenant_id, list_id, key = tenant.id, news.id, viewer.secret
    with engine.begin() as connection:
        for start in range(0, count, SEED_BATCH):
            connection.execute(
                insert(Contact),
                [
                    {
                        "tenant_id": tenant_id,
                        "email": f"person{i}@example.com",
                        "name": f"Person {i}",
                        "attributes": {"plan": "pro" if i % 3 else "free", "n": i},
                        "status": "active",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(start, min(start + SEED_BATCH, count))
                ],
            )
        ids = list(connection.scalars(select(Contact.id).order_by(Contact.id)))
        for start in range(0, len(ids), SEED_BATCH * 2):
            connection.execute(
                insert(ListMember),
                [
                    {"list_id": list_id, "contact_id": cid, "tenant_id": tenant_id, "added_at": now}
                    for cid in ids[start : start + SEED_BATCH * 2 : 2]
                ],
            )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return key, list_id


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def server_pid(port: str) -> int:
    """The pid of the process listening on ``port`` (the uvicorn server), from /proc/net/tcp."""
    wanted = f":{int(port):04X}"
    inodes = {
        line.split()[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(wanted) and line.split()[3] == "0A"
    }
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = str(fd.readlink())
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    raise RuntimeError("server process not found")


def download(
    base_url: str, key: str, params: dict[str, str], pid: int, path: str = "/v1/contacts/export"
) -> tuple[int, float, int]:
    """(lines, seconds, peak server RSS in KiB) of one export (``path``)."""
    peak = rss_kib(pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(pid))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = 0
    started = time.perf_counter()
    with httpx.stream(
        "GET",
        f"{base_url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            lines += chunk.count(b"\n")
    took = time.perf_counter() - started
    stop.set()
    sampler.join()
    return lines, took, peak


def bench(label: str, url: str, count: int) -> None:
    started = time.perf_counter()
    key, list_id = seed(url, count)
    print(f"{label}: seeded {count:,} contacts in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory() as data_dir, serve(url, data_dir) as base_url:
        pid = server_pid(base_url.rsplit(":", 1)[1])
        download(base_url, key, {"format": "csv", "status": "bounced"}, pid)  # warm up: 0 rows
        report_downloads(
            base_url,
            key,
            pid,
            [
                ("csv, all", {"format": "csv"}),
                ("jsonl, all", {"format": "jsonl"}),
                ("csv, list (half)", {"format": "csv", "list_id": str(list_id)}),
            ],
        )


#: Lines of a download that are no row: the CSV header; the JSON array's "[" and "]" lines.
NOT_ROWS = {"csv": 1, "jsonl": 0, "json": 2}


def report_downloads(
    base_url: str,
    key: str,
    pid: int,
    cases: list[tuple[str, dict[str, str]]],
    path: str = "/v1/contacts/export",
) -> None:
    """Print each case's rows/s and the server's peak RSS above what it used before them."""
    baseline = rss_kib(pid)
    print(f"  server RSS before exporting: {baseline / 1024:.0f} MiB")
    for name, params in cases:
        lines, took, peak = download(base_url, key, params, pid, path)
        rows = lines - NOT_ROWS[params["format"]]
        print(
            f"  {name:<19} {rows:>9,} rows in {took:6.2f} s = {rows / took:>9,.0f} rows/s;"
            f" server peak RSS {peak / 1024:.0f} MiB (+{(peak - baseline) / 1024:.0f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=200_000, help="target: 1,000,000")
    add_database_options(parser)
    args = parser.parse_args()
    for database, url in each_database(args, purpose="export"):
        bench(database, url, args.contacts)


if __name__ == "__main__":
    main()
