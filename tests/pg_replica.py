"""A PostgreSQL primary and its streaming replica, each a cluster of our own in a temporary
directory on a free port, for the read-replica tests.

Our own primary, not the shared test server: a replica needs replication connections, which that
server's ``pg_hba.conf`` may refuse, and a test that pauses replay or stops a server must not
touch what other tests use. ``initdb --auth=trust`` allows replication from 127.0.0.1, and
``pg_basebackup -R -X stream`` makes the standby. PostgreSQL refuses to run as root: under root
the servers run as ``postgres``, like the PgBouncer fixture's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
START_TIMEOUT_SECONDS = 30
#: Speed over durability: these clusters live for one test session.
SERVER_OPTIONS = (
    "-c fsync=off -c full_page_writes=off -c shared_buffers=16MB"
    " -c max_connections=100 -c listen_addresses=127.0.0.1 -c wal_level=replica"
)


def binaries() -> Path | None:
    """The newest PostgreSQL's ``bin`` directory, or None when no server is installed."""
    for directory in reversed(BIN_DIRS):
        if (directory / "initdb").exists() and (directory / "pg_basebackup").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--", *command]


@dataclass
class Server:
    """One cluster: its data directory and port."""

    bin_dir: Path
    data_dir: Path
    port: int
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._ctl(
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-l",
            str(self.data_dir.parent / f"{self.data_dir.name}.log"),
            "-o",
            f"-p {self.port} -k {self.socket_dir} {SERVER_OPTIONS}",
        )

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode, "-w")

    def running(self) -> bool:
        status = subprocess.run(
            _as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True,
        )
        return status.returncode == 0

    def _ctl(self, *arguments: str) -> None:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *arguments]
        done = subprocess.run(_as_server_user(command), capture_output=True, text=True)
        if done.returncode != 0:
            log = self.data_dir.parent / f"{self.data_dir.name}.log"
            raise RuntimeError(
                f"pg_ctl {arguments[0]} failed: {done.stdout}{done.stderr}"
                + (log.read_text()[-2000:] if log.exists() else "")
            )


@dataclass
class ReplicatedCluster:
    """A primary, its hot standby, and what the tests do to them."""

    primary: Server
    replica: Server
    root: Path
    database: str = "tidings"

    @property
    def primary_url(self) -> str:
        return self.primary.url(self.database)

    @property
    def replica_url(self) -> str:
        return self.replica.url(self.database)

    def execute(self, url: str, sql: str) -> object:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                result = connection.execute(text(sql))
                return result.scalar() if result.returns_rows else None
        finally:
            engine.dispose()

    def pause_replay(self) -> None:
        """Replay stops: from now on the replica shows nothing the primary writes."""
        self.execute(self.replica_url, "SELECT pg_wal_replay_pause()")
        state = "SELECT pg_get_wal_replay_pause_state()"
        deadline = time.monotonic() + 10
        while self.execute(self.replica_url, state) != "paused":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not pause its replay")
            time.sleep(0.01)

    def resume_replay(self) -> None:
        self.execute(self.replica_url, "SELECT pg_wal_replay_resume()")

    def wait_caught_up(self, timeout: float = 15.0) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        target = self.execute(self.primary_url, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while True:
            done = self.execute(
                self.replica_url,
                f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn",
            )
            if done:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica did not replay up to {target}")
            time.sleep(0.02)

    def close(self) -> None:
        for server in (self.replica, self.primary):
            if server.running():
                server.stop("immediate")  # its data is thrown away next
        shutil.rmtree(self.root, ignore_errors=True)


def start_replicated_cluster(bin_dir: Path) -> ReplicatedCluster:
    """initdb a primary, start it, create the database, and start a replica made from it."""
    root = Path(tempfile.mkdtemp(prefix="tidings-replica-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    primary = Server(bin_dir, root / "primary", _free_port(), root)
    replica = Server(bin_dir, root / "replica", _free_port(), root)
    cluster = ReplicatedCluster(primary=primary, replica=replica, root=root)
    try:
        subprocess.run(
            _as_server_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(primary.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            ),
            check=True,
            capture_output=True,
        )
        primary.start()
        cluster.execute(primary.url(), f'CREATE DATABASE "{cluster.database}"')
        subprocess.run(
            _as_server_user(
                [
                    str(bin_dir / "pg_basebackup"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(replica.data_dir),
                    "-R",
                    "-X",
                    "stream",
                    "--no-sync",
                    "--checkpoint=fast",  # a spread checkpoint would make it wait for minutes
                ]
            ),
            check=True,
            capture_output=True,
        )
        replica.start()
    except BaseException:
        cluster.close()
        raise
    return cluster
