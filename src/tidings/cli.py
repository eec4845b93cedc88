"""The ``tidings`` command line (Typer + Rich). Commands call services, never around them.

This module holds the process commands (``serve``, ``worker``, ``demo``, ``db``) and tenants and
keys; the other groups live in ``cli_contacts``, ``cli_campaigns``, ``cli_messages`` and
``cli_transports``, their shared plumbing (errors, runtime, ``--tenant`` / ``--url`` targets) in
``cli_common``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from tidings.cli_bounces import bounces
from tidings.cli_campaigns import campaign_app
from tidings.cli_common import (
    console,
    database_problem,
    fail,
    load_settings,
    open_runtime,
    unit_of_work,
)
from tidings.cli_contacts import contacts_app
from tidings.cli_domains import domains_app
from tidings.cli_messages import queue, send
from tidings.cli_segments import segments_app
from tidings.cli_transports import transports_app
from tidings.db.engine import make_engine, upgrade
from tidings.delivery.worker import DEFAULT_CONCURRENCY as WORKER_CONCURRENCY
from tidings.demo import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONTACTS,
    DEFAULT_RATE,
    DEMO_TENANT,
    DemoResult,
    outbox_folder,
    run_demo,
)
from tidings.domain import Role
from tidings.errors import TidingsError
from tidings.logging import configure_logging
from tidings.runtime import Runtime, freeze_startup_objects
from tidings.services import tenants

app = typer.Typer(help="Tidings: self-hosted email delivery.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (companies, programs).", no_args_is_help=True)
key_app = typer.Typer(help="API keys of a tenant.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
app.add_typer(contacts_app, name="contacts")
app.add_typer(campaign_app, name="campaign")
app.add_typer(domains_app, name="domains")
app.add_typer(segments_app, name="segments")
app.add_typer(transports_app, name="transports")


def _configure_logging() -> None:
    try:
        configure_logging(load_settings())
    except TidingsError as exc:
        raise fail(exc.message) from None


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(
        1, min=0, max=64, help="Embedded delivery workers per process (0: API only)."
    ),
    processes: int = typer.Option(
        1,
        min=1,
        max=64,
        help="API processes sharing the port: one Python process answers on one core at most.",
    ),
) -> None:
    """Run the HTTP API and dashboard, with embedded delivery workers."""
    import uvicorn

    from tidings.api.app import EMBEDDED_WORKERS_ENV, create_app

    _configure_logging()
    # Settings are checked and a new SQLite file is migrated here, once, before any process starts.
    with open_runtime(check_schema=False) as runtime:
        console.print(
            f"Tidings on http://{host}:{port}  (docs: /docs, database: {runtime.dialect}, "
            f"{processes} process{'es' if processes > 1 else ''})"
        )
        # log_config=None: uvicorn's records go through our handler (JSON when configured).
        if processes == 1:
            api = create_app(runtime, embedded_workers=workers)
            uvicorn.run(api, host=host, port=port, log_level="warning", log_config=None)
            return
    os.environ[EMBEDDED_WORKERS_ENV] = str(workers)
    uvicorn.run(
        "tidings.api.app:app_from_environment",
        factory=True,
        workers=processes,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
    )


@app.command()
def worker(
    concurrency: int = typer.Option(
        WORKER_CONCURRENCY,
        min=1,
        max=1000,
        help="Messages in flight at once; connections to the mail service stay capped at 20.",
    ),
    metrics_port: int | None = typer.Option(
        None,
        min=1,
        max=65535,
        help="Serve this process's Prometheus metrics (send latency, attempts) on this port.",
        show_default=False,
    ),
    metrics_host: str = typer.Option("127.0.0.1", help="Address for --metrics-port."),
) -> None:
    """Run a delivery worker until SIGTERM / Ctrl-C (in-flight sends finish and are recorded)."""
    import signal

    from tidings.delivery.worker import run_workers

    async def main(runtime: Runtime) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        freeze_startup_objects()
        await run_workers(runtime, stop, concurrency=concurrency)

    _configure_logging()
    with open_runtime(check_schema=False) as runtime:
        if metrics_port is not None:
            from prometheus_client import start_http_server

            import tidings.metrics  # noqa: F401 - registers the delivery metrics before a scrape

            try:
                start_http_server(metrics_port, addr=metrics_host)
            except OSError as exc:
                raise fail(
                    f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}"
                ) from None
        console.print(f"worker started (concurrency {concurrency}, database: {runtime.dialect})")
        with asyncio.Runner(loop_factory=_fastest_event_loop()) as runner:
            runner.run(main(runtime))


def _fastest_event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (uvicorn[standard] brings it on Linux and macOS), the loop
    uvicorn already runs ``serve`` on. ``bench/bench_smtp_clients.py`` measures the SMTP pool 20 %
    faster on it; end to end the worker gains less (3,479-3,689 against 3,458 messages/s), since
    the database work is the larger part. None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@app.command()
def demo(
    contacts: int = typer.Option(
        DEFAULT_CONTACTS, min=1, max=100_000, help="Generated contacts (at example.com) to send to."
    ),
    rate: int = typer.Option(
        DEFAULT_RATE, min=1, max=100_000, help="The demo tenant's throttle, messages per second."
    ),
    concurrency: int = typer.Option(
        DEFAULT_CONCURRENCY, min=1, max=1000, help="Messages in flight in the embedded worker."
    ),
    tenant: str = typer.Option(DEMO_TENANT, help="The demo tenant (created, or reused)."),
) -> None:
    """Send a demo campaign to generated contacts, with a live progress bar.

    Sets up (or reuses) a demo tenant with a throttle, imports the contacts into a list, stores a
    personalised template and delivers the campaign through the configured transport (by default
    the local outbox) with a worker inside this command.
    """
    _configure_logging()
    with open_runtime() as runtime:
        try:
            result = run_demo(
                runtime,
                console=console,
                tenant_name=tenant,
                contacts=contacts,
                rate=rate,
                concurrency=concurrency,
            )
        except TidingsError as exc:
            raise fail(exc.message) from None
        except KeyboardInterrupt:
            raise fail(
                "interrupted; the campaign goes on whenever a worker runs (tidings serve)", 130
            ) from None
        _print_demo(result, runtime)


def _print_demo(result: DemoResult, runtime: Runtime) -> None:
    final, setup = result.final, result.setup
    rate = final.sent / result.seconds if result.seconds > 0 else 0.0
    console.print(
        f"[bold green]done:[/] {final.sent:,} sent, {final.failed:,} failed,"
        f" {final.suppressed:,} suppressed in {result.seconds:.1f} s ({rate:,.0f}/s)"
    )
    console.print(f"admin API key of tenant {escape(repr(setup.tenant_name))}, shown once:")
    print(setup.admin_key)  # noqa: T201 - plain, to copy
    base = runtime.settings.public_url
    console.print(f"dashboard: {base}/  (start it with ./scripts/serve; sign in with the key)")
    console.print(
        f"campaign:  {base}/v1/campaigns/{setup.campaign_id}  (Authorization: Bearer KEY)"
    )
    folder = outbox_folder(runtime)
    if folder is not None:
        console.print(f"messages:  {folder}  (one .eml file per message)")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (safe to run again)."""
    settings = load_settings()
    try:
        engine = make_engine(
            settings.resolved_database_url(),
            transaction_pooling=settings.database_pooling == "transaction",
        )
        upgrade(engine)
    except TidingsError as exc:
        raise fail(exc.message) from None
    except SQLAlchemyError as exc:
        raise fail(database_problem(exc)) from None
    except ValueError as exc:
        raise fail(f"TIDINGS_DATABASE_URL cannot be used: {exc}") from None
    console.print(f"database is up to date ({engine.dialect.name})")
    engine.dispose()


@tenant_app.command("create")
def tenant_create(name: str = typer.Argument(..., help="The tenant's name, unique.")) -> None:
    """Create a tenant and print its first admin key (shown once)."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        tenant, issued = tenants.create_tenant(session=session, name=name, now=runtime.clock.now())
        tenant_id = tenant.id
    console.print(f"tenant {escape(repr(name))} created (id {tenant_id})")
    console.print("admin API key (store it now, it is not shown again):")
    print(issued.secret)  # noqa: T201 - plain, for scripts: key=$(tidings tenant create x | tail -1)


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        table = Table("id", "name", "created")
        for tenant in tenants.list_tenants(session=session):
            table.add_row(
                str(tenant.id),
                escape(tenant.name),
                tenant.created_at.isoformat(timespec="seconds"),
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
                    escape(key.name),
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


app.command("send")(send)
app.command("queue")(queue)
app.command("bounces")(bounces)


def main() -> None:
    app()
