"""``tidings tenant`` and ``tidings key``: tenants and their API keys, local only (creating the
first admin key is how every remote use begins, so it cannot need one)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from tidings.cli.common import (
    console,
    open_runtime,
    unit_of_work,
)
from tidings.domain import Role
from tidings.services import tenants

tenant_app = typer.Typer(help="Tenants (companies, programs).", no_args_is_help=True)
key_app = typer.Typer(help="API keys of a tenant.", no_args_is_help=True)


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
