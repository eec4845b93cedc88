"""How fast a bulk contact import runs: a generated CSV of 100,000 rows (with attribute columns)
imported into a list on PostgreSQL and on SQLite.

For each database it times three imports, each including its commit:
  * ``service, new``: ``import_contacts`` reading the file in 64 KiB chunks, every row a new contact;
  * ``service, again``: the same file once more, every row an update (attributes merged);
  * ``http, new``: the same rows under other addresses, streamed with chunked transfer encoding to
    ``POST /v1/lists/{id}/import`` on a real uvicorn server at 127.0.0.1.
It creates its own databases (a temporary SQLite file; a throw-away PostgreSQL database, dropped at
the end). Prints figures; asserts nothing about time.

    python bench/bench_import.py [--rows 100000] [--backend both|postgres|sqlite] [--no-http]
                                 [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from databases import PG_ADMIN_URL, postgres_database, sqlite_database
from sqlalchemy import func, select

from tidings.address_hash import address_key
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Contact
from tidings.domain import Role
from tidings.runtime import Runtime, build_runtime
from tidings.services import lists, tenants
from tidings.services.imports import ImportFormat, import_contacts

CHUNK_BYTES = 65_536  # what a web server typically hands over per read
TIMEZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "")
PLANS = ("free", "pro", "team", "enterprise")


def write_csv(path: Path, rows: int, domain: str) -> None:
    """A realistic export: names, time zones, and four attribute columns."""
    rng = random.Random(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["email", "first_name", "last_name", "timezone", "plan", "company", "signup", "score"]
        )
        for i in range(rows):
            writer.writerow(
                [
                    f"user{i}.{rng.randrange(10**6)}@{domain}{i % 97}.example.com",
                    f"First{i}",
                    f"Last, {i}",
                    TIMEZONES[i % len(TIMEZONES)],
                    PLANS[i % len(PLANS)],
                    f"Company {i % 1000}",
                    f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
                    str(rng.randrange(100)),
                ]
            )


def read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def make_tenant(runtime: Runtime, name: str) -> tuple[int, int, str]:
    """A tenant, a list and a sender key: (tenant id, list id, key)."""
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        tenant, _ = tenants.create_tenant(session=session, name=name, now=now)
        key = tenants.create_key(
            session=session, tenant_id=tenant.id, name="bench", role=Role.sender, now=now
        )
        contact_list = lists.create_list(
            session=session, tenant_id=tenant.id, name="imported", description=None, now=now
        )
        return tenant.id, contact_list.id, key.secret


def timed(label: str, rows: int, run: Callable[[], str]) -> None:
    started = time.perf_counter()
    detail = run()
    seconds = time.perf_counter() - started
    print(
        f"  {label:<16} {rows:>8} rows  {seconds:7.2f} s  {rows / seconds:>9,.0f} rows/s  {detail}"
    )


def import_with_service(runtime: Runtime, tenant_id: int, list_id: int, path: Path) -> str:
    with transaction(runtime.sessions) as session:
        result = import_contacts(
            session=session,
            tenant_id=tenant_id,
            list_id=list_id,
            chunks=read_chunks(path),
            file_format=ImportFormat.csv,
            now=datetime.now(UTC),
            max_attributes_bytes=runtime.settings.max_attributes_bytes,
            address_key=address_key(runtime.secret_key),
        )
    return (
        f"created={result.created} updated={result.updated}"
        f" added={result.added_to_list} skipped={result.skipped_count}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve(url: str, data_dir: str) -> Iterator[str]:
    """``tidings serve`` (uvicorn, API only) in its own process, so that client and server do not
    share one interpreter."""
    port = free_port()
    environment = {
        **os.environ,
        "TIDINGS_DATABASE_URL": url,
        "TIDINGS_DATA_DIR": data_dir,
        "TIDINGS_SECRET_KEY": "b" * 40,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--workers", "0"],
        env=environment,
        stdout=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)


def import_over_http(base_url: str, list_id: int, key: str, path: Path) -> str:
    answer = httpx.post(
        f"{base_url}/v1/lists/{list_id}/import",
        content=read_chunks(path),
        headers={"authorization": f"Bearer {key}", "content-type": "text/csv"},
        timeout=600,
    )
    answer.raise_for_status()
    body = answer.json()
    return (
        f"created={body['created']} updated={body['updated']}"
        f" added={body['added_to_list']} skipped={body['skipped_count']}"
    )


def bench(label: str, url: str, rows: int, files: tuple[Path, Path], http: bool) -> None:
    print(f"{label}:")
    with tempfile.TemporaryDirectory() as data_dir:
        runtime = build_runtime(
            Settings(database_url=url, data_dir=Path(data_dir), secret_key="b" * 40), migrate=True
        )
        try:
            tenant_id, list_id, _ = make_tenant(runtime, "bench-service")
            timed(
                "service, new",
                rows,
                lambda: import_with_service(runtime, tenant_id, list_id, files[0]),
            )
            timed(
                "service, again",
                rows,
                lambda: import_with_service(runtime, tenant_id, list_id, files[0]),
            )
            if http:
                _, http_list, key = make_tenant(runtime, "bench-http")
                with serve(url, data_dir) as base_url:
                    timed(
                        "http, new",
                        rows,
                        lambda: import_over_http(base_url, http_list, key, files[1]),
                    )
            with runtime.sessions() as session:
                total = session.scalar(select(func.count()).select_from(Contact))
            print(f"  contacts stored: {total}")
        finally:
            runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=("both", "postgres", "sqlite"), default="both")
    parser.add_argument("--no-http", action="store_true", help="skip the import through uvicorn")
    parser.add_argument("--pg", default=PG_ADMIN_URL)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        files = (Path(directory) / "service.csv", Path(directory) / "http.csv")
        write_csv(files[0], args.rows, "svc")
        write_csv(files[1], args.rows, "web")
        size = files[0].stat().st_size
        print(f"{args.rows:,} rows, {size / 1e6:.1f} MB of CSV per file, 4 attribute columns")
        if args.backend in ("both", "postgres"):
            with postgres_database(args.pg, purpose="import") as url:
                bench("PostgreSQL", url, args.rows, files, not args.no_http)
        if args.backend in ("both", "sqlite"):
            with sqlite_database() as url:
                bench("SQLite", url, args.rows, files, not args.no_http)


if __name__ == "__main__":
    main()
