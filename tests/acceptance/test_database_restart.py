"""PostgreSQL restarts in the middle of a campaign: worker processes resume, and nothing is lost.

The shared server at 127.0.0.1:5432 is never restarted (other test runs use it): the test starts
a private cluster of its own (initdb into a temporary directory, a free port, trust
authentication), as the ``postgres`` OS user when it runs as root, and removes it afterwards.

What the design promises (DESIGN.md, "Crash safety"): delivery is at-least-once, the only
duplicate window being a connection lost after the final '.' of DATA. A restart of the database
is not such a window when it is shorter than the lease: every send in flight finishes against
the mail server, its outcome write is retried until the database is back, and it lands under its
own lease token. So this test asserts exactly once: a duplicate would mean an outcome was lost and
the message sent again after its lease ran out.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.conftest import WorkerProcess, start_campaign, wait_for_completion, wait_until
from tests.acceptance.test_worker_processes import audience
from tests.conftest import TenantKeys
from tests.smtp_server import SmtpTestServer, slow
from tidings.db.engine import make_engine, upgrade
from tidings.runtime import Runtime

#: How soon after the database is back delivery must be under way again.
RESUME_WITHIN = 10.0  # seconds
#: Longer than any restart here, so outcomes in flight are recorded under their own lease.
LEASE_SECONDS = "30"
RECIPIENTS = 240
WORKERS = 2
CONCURRENCY = 4  # per worker: as many SMTP connections, so at most 8 sends in flight


def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout), if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: tuple(int(part) for part in Path(p).parent.parent.name.split(".")),
    )
    return Path(found[-1]).parent if found else None


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster owned by one test: ``url`` to use it, ``restart()`` to bounce it."""

    bin: Path
    data: Path
    port: int
    as_postgres: list[str]  # the command prefix that runs a program as the cluster's owner

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data.parent}"
            " -c fsync=off"  # a clean (fast) shutdown still writes everything; only faster
        )
        self.pg_ctl("-l", str(self.data.parent / "server.log"), "-o", options, "start")

    def restart(self) -> None:
        """Stop (``-m fast``: every session is cut off, as in a real restart), then start."""
        self.pg_ctl("-m", "fast", "restart")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        reason = "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires them: {reason}")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster = PrivatePostgres(bin=bin_dir, data=root / "data", port=port, as_postgres=as_postgres)
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust"]
        subprocess.run(
            [*as_postgres, *initdb, "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
        engine = make_engine(cluster.url)
        upgrade(engine)
        engine.dispose()
        yield cluster
    finally:
        try:
            cluster.pg_ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db_url(private_postgres: PrivatePostgres) -> str:
    return private_postgres.url


def test_a_postgresql_restart_mid_campaign_loses_nothing_and_delivery_resumes(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
    private_postgres: PrivatePostgres,
) -> None:
    smtp_server.fail(None, slow(0.1, at="MAIL"))  # about 80 messages a second: seconds of work
    campaign_id = start_campaign(client, acme, audience(client, runtime, acme, RECIPIENTS))
    for _ in range(WORKERS):
        worker_process(concurrency=CONCURRENCY, TIDINGS_LEASE_SECONDS=LEASE_SECONDS)
    smtp_server.wait_for(RECIPIENTS // 4, timeout=60)
    before = len(smtp_server.messages)
    private_postgres.restart()  # returns once the server accepts connections again
    assert len(smtp_server.messages) < RECIPIENTS, "the campaign ended before the restart"
    # More arrivals than sends that can have been in flight: new claims, after the restart.
    in_flight = WORKERS * CONCURRENCY
    wait_until(lambda: len(smtp_server.messages) > before + in_flight, timeout=RESUME_WITHIN)
    done = wait_for_completion(client, acme, campaign_id, timeout=90)
    assert (done["sent"], done["failed"], done["pending"]) == (RECIPIENTS, 0, 0)
    counts = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert len(counts) == RECIPIENTS, "a recipient was lost"
    assert set(counts.values()) == {1}, [r for r, n in counts.items() if n > 1]
