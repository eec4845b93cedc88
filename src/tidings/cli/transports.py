"""``tidings transports``: a tenant's own sending accounts (add, list, test, delete), through the
same service functions as ``/v1/transports``. URLs are shown masked; a password is never printed."""

from __future__ import annotations

import asyncio

import typer
from rich.markup import escape
from rich.table import Table

from tidings.cli.common import console, fail, open_runtime, tenant_id_of, unit_of_work
from tidings.errors import TidingsError
from tidings.services import transports
from tidings.transports.factory import probe_url
from tidings.transports.tenant_urls import check_tenant_url

transports_app = typer.Typer(
    help="A tenant's own sending accounts (SMTP relays, Resend keys), with failover.",
    no_args_is_help=True,
)

TENANT = typer.Option(..., "--tenant", help="Tenant name.")


@transports_app.command("add")
def add(
    name: str = typer.Argument(..., help="A name to tell it by, e.g. 'school relay'."),
    url: str = typer.Argument(
        ...,
        help="smtp://user:pass@host:587?tls=starttls, smtps://…, resend://KEY, or an outbox in "
        "the tenant's directory. Tip: pass it from a variable so it stays out of shell history.",
    ),
    tenant: str = TENANT,
    priority: int = typer.Option(1, min=1, max=transports.MAX_PRIORITY, help="1 is tried first."),
    weight: int = typer.Option(
        1, min=1, max=transports.MAX_WEIGHT, help="Share of its priority's mail."
    ),
) -> None:
    """Add a transport: the tenant's mail then goes only through its own transports."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        row = transports.create_transport(
            session=session,
            tenant_id=tenant_id_of(session, tenant),
            name=name,
            url=url,
            priority=priority,
            weight=weight,
            settings=runtime.settings,
            secret_key=runtime.secret_key,
            now=runtime.clock.now(),
        )
        shown = (row.id, row.url_masked)
    console.print(f"added transport {shown[0]}: {escape(shown[1])}")


@transports_app.command("list")
def list_(tenant: str = TENANT) -> None:
    """The tenant's transports in the order they are tried, with their health."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        rows = transports.transports_health(
            session=session, tenant_id=tenant_id_of(session, tenant)
        )
    if not rows:
        console.print("no transports: this tenant's mail goes through TIDINGS_TRANSPORT_URL")
        return
    table = Table("id", "name", "url", "priority", "weight", "health", "last error")
    for row in rows:
        health = "healthy" if row.healthy else "[red]unhealthy[/]"
        table.add_row(
            str(row.id),
            escape(row.name),
            escape(row.url),
            str(row.priority),
            str(row.weight),
            health,
            escape(row.last_error or ""),
        )
    console.print(table)


@transports_app.command("test")
def test(transport_id: int = typer.Argument(..., min=1), tenant: str = TENANT) -> None:
    """Connect and say hello (SMTP: TLS, EHLO, AUTH; Resend: an authenticated read); sends
    nothing. Exit code 1 when it fails."""
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            owner = tenant_id_of(session, tenant)
            row = transports.get_transport(
                session=session, tenant_id=owner, transport_id=transport_id
            )
            url = transports.transport_url(row=row, secret_key=runtime.secret_key)
            try:
                check_tenant_url(
                    url, tenant_id=owner, policy=transports.url_policy(runtime.settings)
                )
            except TidingsError as exc:
                raise fail(exc.message) from None
        result = asyncio.run(probe_url(url))
        with unit_of_work(runtime) as session:
            transports.record_test(
                session=session,
                tenant_id=owner,
                transport_id=transport_id,
                result=result,
                now=runtime.clock.now(),
            )
    verdict = "[green]ok[/]" if result.ok else "[red]failed[/]"
    console.print(
        f"{verdict} in {result.latency_ms:.0f} ms ({escape(result.checked)}): "
        f"{escape(result.answer)}"
    )
    if not result.ok:
        raise typer.Exit(1)


@transports_app.command("delete")
def delete(transport_id: int = typer.Argument(..., min=1), tenant: str = TENANT) -> None:
    """Remove a transport; with none left, the tenant's mail goes through the default again."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        transports.delete_transport(
            session=session, tenant_id=tenant_id_of(session, tenant), transport_id=transport_id
        )
    console.print(f"deleted transport {transport_id}")
