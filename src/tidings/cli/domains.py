"""``tidings domains``: a tenant's sender domains, the DNS records to publish, verification and
DKIM key rotation, on the database directly (``--tenant``)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from tidings.cli.common import console, fail, open_runtime, tenant_id_of, unit_of_work
from tidings.db.models import SenderDomain
from tidings.runtime import Runtime
from tidings.services import domains
from tidings.transports.dkim_sign import ALGORITHMS, RSA

domains_app = typer.Typer(
    help="Sender domains: DKIM keys, DNS records, verification.", no_args_is_help=True
)


def _algorithm(value: str) -> str:
    if value not in ALGORITHMS:
        raise typer.BadParameter(f"choose {' or '.join(ALGORITHMS)}", param_hint="--algorithm")
    return value


def _find(session: Session, tenant_id: int, name: str) -> SenderDomain:
    """A domain by its name (or its id)."""
    if name.isdigit():
        return domains.get_domain(session=session, tenant_id=tenant_id, domain_id=int(name))
    wanted = domains.normalise_domain(name)
    for row in domains.domains_of(session=session, tenant_id=tenant_id):
        if row.domain == wanted:
            return row
    raise fail(f"no sender domain {wanted} for this tenant")


def _print_records(row: SenderDomain, runtime: Runtime) -> None:
    console.print(
        f"{escape(row.domain)}: [bold]{row.status}[/]"
        + (f" ({escape(row.reason)})" if row.reason else "")
        + (" - mail is DKIM-signed" if domains.signs_mail(row) else "")
    )
    for record in domains.dns_records(row, spf_include=runtime.settings.spf_include):
        need = "publish" if record.required else "suggested"
        console.print(f"\n[bold]{record.purpose}[/] ({need}) {record.type} {escape(record.name)}")
        console.print("  " + " ".join(f'"{escape(s)}"' for s in record.strings), soft_wrap=True)
        console.print(f"  [dim]{escape(record.note)}[/]")


@domains_app.command("add")
def add(
    domain: str = typer.Argument(..., help="The domain mail is sent from, e.g. mail.example.com."),
    tenant: str = typer.Option(..., help="Tenant name."),
    algorithm: str = typer.Option(RSA, help=f"DKIM key: {' or '.join(ALGORITHMS)}."),
) -> None:
    """Add a sender domain with a new DKIM key, and print the DNS records to publish."""
    chosen = _algorithm(algorithm)
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        row = domains.create_domain(
            session=session,
            tenant_id=tenant_id_of(session, tenant),
            domain=domain,
            algorithm=chosen,
            secret_key=runtime.secret_key,
            now=runtime.clock.now(),
        )
        _print_records(row, runtime)
        console.print(f"\nthen: tidings domains verify {row.domain} --tenant {escape(tenant)}")


@domains_app.command("verify")
def verify(
    domain: str = typer.Argument(..., help="The domain (or its id)."),
    tenant: str = typer.Option(..., help="Tenant name."),
) -> None:
    """Look the domain's records up (TIDINGS_DNS_RESOLVER) and mark it verified or failed.
    Exits with 1 when it failed."""
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:  # short: the lookups hold no transaction
            owner = tenant_id_of(session, tenant)
            target = domains.verification_target(
                session=session, tenant_id=owner, domain_id=_find(session, owner, domain).id
            )
        findings = domains.check_dns(
            target,
            lookup=domains.resolver_lookup(runtime.settings.dns_resolver),
            secret_key=runtime.secret_key,
        )
        with unit_of_work(runtime) as session:
            row = domains.record_verification(
                session=session, target=target, findings=findings, now=runtime.clock.now()
            )
            status, reason = row.status, row.reason
    for line in findings.advice:
        console.print(f"  [dim]{escape(line)}[/]")
    if status != domains.VERIFIED:
        raise fail(f"{target.domain}: {status}: {reason}")
    console.print(f"{escape(target.domain)}: [bold green]verified[/]: its mail is DKIM-signed")


@domains_app.command("list")
def list_domains(tenant: str = typer.Option(..., help="Tenant name.")) -> None:
    """The tenant's sender domains and their status."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        rows = domains.domains_of(session=session, tenant_id=tenant_id_of(session, tenant))
        table = Table("id", "domain", "status", "signing", "algorithm", "selector", "reason")
        for row in rows:
            table.add_row(
                str(row.id),
                escape(row.domain),
                row.status,
                "yes" if domains.signs_mail(row) else "no",
                row.algorithm,
                row.selector,
                escape(row.reason or ""),
            )
        console.print(table)


@domains_app.command("records")
def records(
    domain: str = typer.Argument(..., help="The domain (or its id)."),
    tenant: str = typer.Option(..., help="Tenant name."),
) -> None:
    """Print the DNS records to publish for a domain."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        _print_records(_find(session, tenant_id_of(session, tenant), domain), runtime)


@domains_app.command("rotate")
def rotate(
    domain: str = typer.Argument(..., help="The domain (or its id)."),
    tenant: str = typer.Option(..., help="Tenant name."),
    algorithm: str | None = typer.Option(None, help="Default: the current key's algorithm."),
) -> None:
    """A new DKIM key and selector; publish the new record, keep the previous one, then verify."""
    chosen = _algorithm(algorithm) if algorithm is not None else None
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenant_id_of(session, tenant)
        row = domains.rotate_domain(
            session=session,
            tenant_id=owner,
            domain_id=_find(session, owner, domain).id,
            algorithm=chosen,
            secret_key=runtime.secret_key,
            now=runtime.clock.now(),
        )
        _print_records(row, runtime)


@domains_app.command("delete")
def delete(
    domain: str = typer.Argument(..., help="The domain (or its id)."),
    tenant: str = typer.Option(..., help="Tenant name."),
) -> None:
    """Remove a sender domain: its mail goes unsigned within a minute."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenant_id_of(session, tenant)
        row = _find(session, owner, domain)
        name = row.domain
        domains.delete_domain(session=session, tenant_id=owner, domain_id=row.id)
    console.print(f"deleted {escape(name)}")
