"""The ``tidings`` command line (Typer + Rich): the root command and its groups, one module each.

Commands call services, never around them. The groups: ``service`` (serve, worker, demo, db),
``tenants`` (tenant, key), ``contacts``, ``campaigns``, ``messages`` (send, queue), ``bounces``,
``domains``, ``segments`` and ``transports``; their shared plumbing (errors, runtime, the
``--tenant`` / ``--url`` targets) is ``common``, remote calls ``remote``, progress bars ``progress``.
"""

from __future__ import annotations

import typer

from tidings.cli.bounces import bounces
from tidings.cli.campaigns import campaign_app
from tidings.cli.contacts import contacts_app
from tidings.cli.domains import domains_app
from tidings.cli.messages import queue, send
from tidings.cli.segments import segments_app
from tidings.cli.service import db_app, demo, serve, worker
from tidings.cli.tenants import key_app, tenant_app
from tidings.cli.transports import transports_app

app = typer.Typer(help="Tidings: self-hosted email delivery.", no_args_is_help=True)
app.command()(serve)
app.command()(worker)
app.command()(demo)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
app.add_typer(contacts_app, name="contacts")
app.add_typer(campaign_app, name="campaign")
app.add_typer(domains_app, name="domains")
app.add_typer(segments_app, name="segments")
app.add_typer(transports_app, name="transports")
app.command("send")(send)
app.command("queue")(queue)
app.command("bounces")(bounces)


def main() -> None:
    app()
