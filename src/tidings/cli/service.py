"""The process commands: ``serve``, ``worker``, ``demo`` and ``db upgrade``, what an operator
runs to have a service at all, as opposed to the groups that work on a tenant's data."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import typer
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from tidings.cli.common import (
    console,
    database_problem,
    fail,
    load_settings,
    open_runtime,
)
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
from tidings.errors import TidingsError
from tidings.logging import configure_logging
from tidings.runtime import Runtime, freeze_startup_objects

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


def _configure_logging() -> None:
    try:
        configure_logging(load_settings())
    except TidingsError as exc:
        raise fail(exc.message) from None


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

    from tidings.app import EMBEDDED_WORKERS_ENV, create_app

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
        "tidings.app:app_from_environment",
        factory=True,
        workers=processes,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
    )


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
