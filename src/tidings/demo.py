"""``tidings demo``: a whole campaign on a fresh machine, in well under a minute.

It sets up (or reuses) a demo tenant, imports generated contacts into a list through the import
service, stores a personalised template, starts a campaign under a throttle, and delivers it
through the configured transport (the local outbox by default) with a worker embedded in this
process, drawing the progress bar until the campaign completes. Everything goes through the same
services as the API, so what it leaves behind is what the dashboard shows.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from sqlalchemy.orm import Session

from tidings.address_hash import address_key
from tidings.cli.progress import CampaignSnapshot, follow_campaign
from tidings.db.engine import transaction
from tidings.db.models import ContactList, Template
from tidings.domain import Role
from tidings.errors import NotFound
from tidings.rendering.pool import RenderPool
from tidings.runtime import Runtime
from tidings.services import campaigns, imports, lists, templates, tenants, throttles
from tidings.services.pagination import MAX_LIMIT
from tidings.transports.factory import parse_outbox_url

DEMO_TENANT = "Demo"
DEFAULT_CONTACTS = 1_000
DEFAULT_RATE = 50  # messages per second: slow enough to watch the bar move
DEFAULT_CONCURRENCY = 10  # messages in flight in the embedded worker
TEMPLATE_NAME = "Demo welcome"
CONTACTS_PER_CHUNK = 500  # generated CSV rows per chunk handed to the import

FIRST_NAMES = (
    "Ada", "Ben", "Chloé", "Dmitri", "Emeka", "Fatima", "Grace", "Hiro", "Ines", "Jonas",
    "Kavya", "Liam", "Mei", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tariq",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Okafor", "Dubois", "Ivanova", "Tanaka", "García", "Nguyen", "Schmidt",
    "Haddad", "Kowalski", "Murphy", "Rossi", "Silva", "Larsen", "Mensah", "Patel",
)  # fmt: skip
CITIES = ("Lisbon", "Accra", "Osaka", "Montréal", "Tallinn", "Nairobi", "Lima", "Oslo")
PLANS = ("free", "team", "business")

SUBJECT = "Welcome aboard, {{ first_name }}!"
HTML = """<p>Hi {{ first_name }},</p>
<p>{{ personal_message }}</p>
<p>Your {{ attributes.plan }} plan is ready for the {{ attributes.city }} team.
Please finish setting it up before <strong>{{ deadline }}</strong>.</p>
<p>— The Tidings demo</p>
<p><small><a href="{{ unsubscribe_url }}">Unsubscribe</a></small></p>
"""


@dataclass(frozen=True, slots=True)
class DemoSetup:
    tenant_id: int
    tenant_name: str
    tenant_created: bool
    admin_key: str  # a fresh admin key, shown once
    list_id: int
    template_id: int
    campaign_id: int
    recipients: int
    imported: imports.ImportResult


@dataclass(frozen=True, slots=True)
class DemoResult:
    setup: DemoSetup
    final: CampaignSnapshot
    seconds: float


def generate_contacts(count: int, *, seed: int = 7) -> Iterator[bytes]:
    """``count`` made-up contacts as CSV chunks (the same ones for the same count and seed).

    The addresses are at example.com, reserved by RFC 2606: nothing real is ever mailed.
    """
    rng = random.Random(seed)
    width = max(4, len(str(count)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["email", "first_name", "last_name", "city", "plan"])
    for n in range(1, count + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"demo-{n:0{width}d}@example.com"
        writer.writerow([email, first, last, rng.choice(CITIES), rng.choice(PLANS)])
        if n % CONTACTS_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


def set_up_demo(
    *,
    session: Session,
    renderer: RenderPool,
    tenant_name: str,
    contacts: int,
    rate: int,
    now: datetime,
    ttl_seconds: float,
    max_attributes_bytes: int,
    address_key: bytes,
) -> DemoSetup:
    """Tenant, throttle, list, contacts, template and a started campaign, in the caller's transaction."""
    try:
        tenant_id = tenants.get_tenant_by_name(session=session, name=tenant_name).id
        tenant_created = False
        admin = tenants.create_key(
            session=session, tenant_id=tenant_id, name="demo", role=Role.admin, now=now
        )
    except NotFound:
        tenant, admin = tenants.create_tenant(session=session, name=tenant_name, now=now)
        tenant_id, tenant_created = tenant.id, True
    throttles.update_throttle(
        session=session,
        tenant_id=tenant_id,
        changes={"enabled": True, "per_second": rate},
        now=now,
    )
    # One list per audience size, so a rerun with another --contacts sends to exactly that many.
    audience = _list_named(session, tenant_id, f"Demo audience ({contacts:,})", now)
    imported = imports.import_contacts(
        session=session,
        tenant_id=tenant_id,
        list_id=audience.id,
        chunks=generate_contacts(contacts),
        file_format=imports.ImportFormat.csv,
        now=now,
        max_attributes_bytes=max_attributes_bytes,
        address_key=address_key,
    )
    template = _template(session, renderer, tenant_id, now)
    campaign = campaigns.create_campaign(
        session=session,
        tenant_id=tenant_id,
        draft=campaigns.CampaignDraft(
            name=f"Demo campaign {now.astimezone():%Y-%m-%d %H:%M:%S}",
            template_id=template.id,
            list_ids=[audience.id],
            data={
                "personal_message": "Thanks for trying Tidings: this message came out of the demo.",
                "deadline": f"{now + timedelta(days=7):%A %d %B}",
            },
        ),
        now=now,
    )
    campaigns.start_campaign(
        session=session,
        tenant_id=tenant_id,
        campaign_id=campaign.id,
        now=now,
        ttl_seconds=ttl_seconds,
    )
    return DemoSetup(
        tenant_id=tenant_id,
        tenant_name=tenant_name,
        tenant_created=tenant_created,
        admin_key=admin.secret,
        list_id=audience.id,
        template_id=template.id,
        campaign_id=campaign.id,
        recipients=campaign.recipient_count,
        imported=imported,
    )


def _list_named(session: Session, tenant_id: int, name: str, now: datetime) -> ContactList:
    cursor: str | None = None
    while True:
        page = lists.list_lists(
            session=session, tenant_id=tenant_id, limit=MAX_LIMIT, cursor=cursor
        )
        for contact_list in page.items:
            if contact_list.name == name:
                return contact_list
        if page.next_cursor is None:
            return lists.create_list(
                session=session,
                tenant_id=tenant_id,
                name=name,
                description="Made-up contacts at example.com, created by `tidings demo`.",
                now=now,
            )
        cursor = page.next_cursor


def _template(session: Session, renderer: RenderPool, tenant_id: int, now: datetime) -> Template:
    cursor: str | None = None
    while True:
        page = templates.list_templates(
            session=session, tenant_id=tenant_id, limit=MAX_LIMIT, cursor=cursor
        )
        for template in page.items:
            if template.name == TEMPLATE_NAME:
                return template
        if page.next_cursor is None:
            return templates.create_template(
                session=session,
                renderer=renderer,
                tenant_id=tenant_id,
                name=TEMPLATE_NAME,
                subject=SUBJECT,
                html=HTML,
                text=None,
                category=None,
                now=now,
            )
        cursor = page.next_cursor


def run_demo(
    runtime: Runtime,
    *,
    console: Console,
    tenant_name: str = DEMO_TENANT,
    contacts: int = DEFAULT_CONTACTS,
    rate: int = DEFAULT_RATE,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> DemoResult:
    """Set the demo up, then deliver its campaign with an embedded worker until it completes."""
    settings = runtime.settings
    with console.status(f"importing {contacts:,} contacts and starting the campaign…"):
        with transaction(runtime.sessions) as session:
            setup = set_up_demo(
                session=session,
                renderer=runtime.renderer,
                tenant_name=tenant_name,
                contacts=contacts,
                rate=rate,
                now=runtime.clock.now(),
                ttl_seconds=settings.message_ttl_seconds,
                max_attributes_bytes=settings.max_attributes_bytes,
                address_key=address_key(runtime.secret_key),
            )
    console.print(
        f"campaign {setup.campaign_id}: {setup.recipients:,} recipients,"
        f" throttled to {rate:,} messages per second"
    )
    began = time.monotonic()
    final = asyncio.run(_deliver(runtime, setup, console=console, concurrency=concurrency))
    return DemoResult(setup=setup, final=final, seconds=time.monotonic() - began)


async def _deliver(
    runtime: Runtime, setup: DemoSetup, *, console: Console, concurrency: int
) -> CampaignSnapshot:
    """Run a worker in this loop while another thread draws the campaign's progress."""
    from tidings.delivery.worker import run_workers

    stop = asyncio.Event()
    halt = threading.Event()  # ends the drawing thread: campaign done, worker gone, or Ctrl-C
    worker = asyncio.create_task(run_workers(runtime, stop, concurrency=concurrency))
    worker.add_done_callback(lambda _: halt.set())

    def poll() -> CampaignSnapshot:
        with transaction(runtime.sessions) as session:
            campaign = campaigns.get_campaign(
                session=session, tenant_id=setup.tenant_id, campaign_id=setup.campaign_id
            )
            progress = campaigns.campaign_progress(
                session=session, campaigns=[campaign], now=runtime.clock.now()
            )
            return CampaignSnapshot.of(campaign, progress[campaign.id])

    try:
        final = await asyncio.to_thread(follow_campaign, poll, console=console, halt=halt)
    finally:
        halt.set()
        stop.set()  # in-flight sends finish and are recorded
        await asyncio.gather(worker, return_exceptions=True)
    failure = worker.exception() if worker.done() and not worker.cancelled() else None
    if failure is not None:
        raise failure
    return final


def outbox_folder(runtime: Runtime) -> Path | None:
    """Where the outbox transport writes (its ``new/`` folder), or None for another transport."""
    url = runtime.settings.resolved_transport_url()
    if not url.lower().startswith("outbox:"):
        return None
    return parse_outbox_url(url) / "new"
