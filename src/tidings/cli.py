"""The ``tidings`` command line (Typer + Rich). Commands call services, never around them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from tidings.config import Settings
from tidings.db.engine import make_engine, transaction, upgrade
from tidings.domain import Role
from tidings.errors import TidingsError
from tidings.runtime import Runtime, build_runtime
from tidings.services import tenants

app = typer.Typer(help="Tidings: self-hosted email delivery.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (companies, programs).", no_args_is_help=True)
key_app = typer.Typer(help="API keys of a tenant.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@contextmanager
def open_runtime() -> Iterator[Runtime]:
    try:
        runtime = build_runtime(Settings())
    except TidingsError as exc:
        raise fail(exc.message) from exc
    try:
        yield runtime
    finally:
        runtime.close()


@contextmanager
def unit_of_work(runtime: Runtime) -> Iterator[Session]:
    """One committed transaction; service errors become a message and exit code 1."""
    try:
        with transaction(runtime.sessions) as session:
            yield session
    except TidingsError as exc:
        raise fail(exc.message) from exc


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, min=0, max=64, help="Embedded delivery workers (0: API only)."),
) -> None:
    """Run the HTTP API and dashboard, with embedded delivery workers."""
    import uvicorn

    from tidings.api.app import create_app

    with open_runtime() as runtime:
        api = create_app(runtime, embedded_workers=workers)
        console.print(
            f"Tidings on http://{host}:{port}  (docs: /docs, database: {runtime.dialect})"
        )
        uvicorn.run(api, host=host, port=port, log_level="warning")


@app.command()
def worker(
    concurrency: int = typer.Option(50, min=1, max=1000, help="Messages in flight at once."),
) -> None:
    """Run a delivery worker until SIGTERM / Ctrl-C (in-flight sends finish and are recorded)."""
    import asyncio
    import signal

    from tidings.delivery.worker import run_workers

    async def main(runtime: Runtime) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_workers(runtime, stop, concurrency=concurrency)

    with open_runtime() as runtime:
        console.print(f"worker started (concurrency {concurrency}, database: {runtime.dialect})")
        asyncio.run(main(runtime))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (safe to run again)."""
    settings = Settings()
    try:
        engine = make_engine(settings.resolved_database_url())
        upgrade(engine)
    except TidingsError as exc:
        raise fail(exc.message) from exc
    console.print(f"database is up to date ({engine.dialect.name})")
    engine.dispose()


@tenant_app.command("create")
def tenant_create(name: str = typer.Argument(..., help="The tenant's name, unique.")) -> None:
    """Create a tenant and print its first admin key (shown once)."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        tenant, issued = tenants.create_tenant(session=session, name=name, now=runtime.clock.now())
        tenant_id = tenant.id
    console.print(f"tenant {name!r} created (id {tenant_id})")
    console.print("admin API key (store it now, it is not shown again):")
    print(issued.secret)  # noqa: T201 - plain, for scripts: key=$(tidings tenant create x | tail -1)


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        table = Table("id", "name", "created")
        for tenant in tenants.list_tenants(session=session):
            table.add_row(
                str(tenant.id), tenant.name, tenant.created_at.isoformat(timespec="seconds")
            )
    console.print(table)


@key_app.command("create")
def key_create(
    tenant: str = typer.Option(..., help="Tenant name."),
    name: str = typer.Option(..., help="What the key is for."),
    role: Role = typer.Option(Role.sender, help="admin, sender or viewer."),
) -> None:
    """Create an API key for a tenant and print it (shown once)."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenants.get_tenant_by_name(session=session, name=tenant)
        issued = tenants.create_key(
            session=session, tenant_id=owner.id, name=name, role=role, now=runtime.clock.now()
        )
    print(issued.secret)  # noqa: T201


@key_app.command("list")
def key_list(tenant: str = typer.Option(..., help="Tenant name.")) -> None:
    """List a tenant's keys (prefix only)."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenants.get_tenant_by_name(session=session, name=tenant)
        table = Table("id", "name", "role", "prefix", "created", "revoked")
        cursor: str | None = None
        while True:
            page = tenants.list_keys(session=session, tenant_id=owner.id, limit=500, cursor=cursor)
            for key in page.items:
                revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else ""
                table.add_row(
                    str(key.id),
                    key.name,
                    key.role,
                    key.prefix,
                    key.created_at.isoformat(timespec="seconds"),
                    revoked,
                )
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    console.print(table)


@key_app.command("revoke")
def key_revoke(
    key_id: int = typer.Argument(..., min=1, help="The key's id (see key list)."),
    tenant: str = typer.Option(..., help="Tenant name."),
) -> None:
    """Revoke an API key at once."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenants.get_tenant_by_name(session=session, name=tenant)
        tenants.revoke_key(
            session=session, tenant_id=owner.id, key_id=key_id, now=runtime.clock.now()
        )
    console.print(f"key {key_id} revoked")


def main() -> None:
    app()
