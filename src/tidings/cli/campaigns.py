"""``tidings campaign``: create, change, delete, start, pause, resume, cancel, list, watch a
campaign, and show how it did (``stats``, with its recipients' results exported by ``--csv``).

Every command but ``create`` and ``list`` works on this machine's database (``--tenant``) or
through a remote API (``--url`` and ``--key``); both call the same service functions in the end.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from tidings.cli.common import (
    DataOption,
    KeyOption,
    SendWindowOption,
    TenantOption,
    UrlOption,
    choose_target,
    console,
    fail,
    open_runtime,
    parse_data,
    parse_send_window_option,
    parse_time,
    remote_errors,
    tenant_id_of,
    unit_of_work,
)
from tidings.cli.progress import (
    POLL_SECONDS,
    CampaignSnapshot,
    follow_campaign,
    status_table,
    summary_line,
)
from tidings.cli.remote import RemoteApi
from tidings.db.models import Campaign, ContactList
from tidings.domain import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from tidings.private_files import create_private_file
from tidings.runtime import Runtime
from tidings.scheduling.windows import SendWindow
from tidings.services import campaign_results, campaign_stats, campaigns, lists, segments
from tidings.services.pagination import MAX_LIMIT

campaign_app = typer.Typer(
    help="Campaigns: bulk sends to lists and contacts.", no_args_is_help=True
)

CampaignId = Annotated[int, typer.Argument(min=1, help="The campaign's id.", show_default=False)]
FollowOption = Annotated[
    bool, typer.Option("--follow", "-f", help="Show a live progress bar until the campaign ends.")
]


@campaign_app.command("create")
def create(
    tenant: str = typer.Option(..., help="Tenant name."),
    name: str = typer.Option(..., help="The campaign's name."),
    template: int = typer.Option(..., min=1, help="Template id."),
    list_names: list[str] | None = typer.Option(
        None,
        "--list",
        help="A list the audience includes, by name (repeatable).",
        show_default=False,
    ),
    segment_names: list[str] | None = typer.Option(
        None,
        "--segment",
        help="A segment whose contacts (as they match at the start) the audience includes, by "
        "name (repeatable).",
        show_default=False,
    ),
    contact_ids: list[int] | None = typer.Option(
        None,
        "--contact",
        min=1,
        help="A contact id the audience includes (repeatable).",
        show_default=False,
    ),
    data: DataOption = None,
    schedule: str | None = typer.Option(
        None,
        help="Start at this time once started, ISO 8601 with zone (2030-01-31T09:00:00Z).",
        show_default=False,
    ),
    priority: int = typer.Option(DEFAULT_PRIORITY, min=MIN_PRIORITY, max=MAX_PRIORITY),
    category: str | None = typer.Option(
        None, help="Category (default: the template's).", show_default=False
    ),
    send_window: SendWindowOption = None,
    start: bool = typer.Option(False, "--start", help="Start it at once (or at --schedule)."),
) -> None:
    """Create a draft campaign (from a template, to lists, segments and/or contacts)."""
    draft_data = parse_data(data)
    scheduled_at = parse_time(schedule, option="--schedule")
    window = parse_send_window_option(send_window)
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            owner = tenant_id_of(session, tenant)
            draft = campaigns.CampaignDraft(
                name=name,
                template_id=template,
                list_ids=[_list_id(session, owner, n) for n in list_names or []],
                contact_ids=list(contact_ids or []),
                segment_ids=[_segment_id(session, owner, n) for n in segment_names or []],
                data=draft_data,
                priority=priority,
                scheduled_at=scheduled_at,
                category=category,
                send_window=window,
            )
            now = runtime.clock.now()
            campaign = campaigns.create_campaign(
                session=session, tenant_id=owner, draft=draft, now=now
            )
            if start:
                campaigns.start_campaign(
                    session=session,
                    tenant_id=owner,
                    campaign_id=campaign.id,
                    now=now,
                    ttl_seconds=runtime.settings.message_ttl_seconds,
                )
        console.print(f"campaign {campaign.id} created ({campaign.status})")
        if not start:
            hint = f"tidings campaign start {campaign.id} --tenant {shlex.quote(tenant)}"
            console.print(f"start it with: {escape(hint)}")


@campaign_app.command("list")
def list_command(
    tenant: str = typer.Option(..., help="Tenant name."),
    limit: int = typer.Option(20, min=1, max=100, help="How many, newest first."),
) -> None:
    """The tenant's newest campaigns with their progress."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenant_id_of(session, tenant)
        page = campaigns.list_campaigns(session=session, tenant_id=owner, limit=limit, cursor=None)
        progress = campaigns.campaign_progress(
            session=session, campaigns=page.items, now=runtime.clock.now()
        )
        snapshots = [CampaignSnapshot.of(c, progress[c.id]) for c in page.items]
    table = Table("id", "name", "status", "recipients", "sent", "failed", "pending", "progress")
    for s in snapshots:
        table.add_row(
            str(s.id),
            escape(s.name),
            s.status.value,
            f"{s.recipient_count:,}",
            f"{s.sent:,}",
            f"{s.failed:,}",
            f"{s.pending:,}",
            f"{s.progress_percentage:.1f} %",
        )
    console.print(table)


@campaign_app.command("status")
def status(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    follow: FollowOption = False,
    interval: float = typer.Option(POLL_SECONDS, min=0.1, max=60, help="Seconds between reads."),
) -> None:
    """A campaign's counts; with --follow, a live progress bar (sent, failed, rate, ETA) until it ends."""
    target = choose_target(tenant, url, key)
    if target.remote is not None:
        with target.remote as api, remote_errors():
            _show(lambda: CampaignSnapshot.from_api(api.campaign(campaign_id)), follow, interval)
        return
    assert target.tenant is not None
    with open_runtime() as runtime:
        owner = _tenant(runtime, target.tenant)
        _show(lambda: _read(runtime, owner, campaign_id), follow, interval)


def _show(poll: Callable[[], CampaignSnapshot], follow: bool, interval: float) -> None:
    if not follow:
        console.print(status_table(poll()))
        return
    last = follow_campaign(poll, console=console, interval=interval)
    console.print(summary_line(last))


def _read(runtime: Runtime, tenant_id: int, campaign_id: int) -> CampaignSnapshot:
    with unit_of_work(runtime) as session:
        campaign = campaigns.get_campaign(
            session=session, tenant_id=tenant_id, campaign_id=campaign_id
        )
        progress = campaigns.campaign_progress(
            session=session, campaigns=[campaign], now=runtime.clock.now()
        )
        return CampaignSnapshot.of(campaign, progress[campaign.id])


def _tenant(runtime: Runtime, name: str) -> int:
    with unit_of_work(runtime) as session:
        return tenant_id_of(session, name)


def _list_id(session: Session, tenant_id: int, name: str) -> int:
    cursor: str | None = None
    while True:
        page = lists.list_lists(
            session=session, tenant_id=tenant_id, limit=MAX_LIMIT, cursor=cursor
        )
        found: list[ContactList] = [item for item in page.items if item.name == name.strip()]
        if found:
            return found[0].id
        if page.next_cursor is None:
            raise fail(f"no list named {name!r}")
        cursor = page.next_cursor


# -- start, pause, resume, cancel ----------------------------------------------------------------


def _segment_id(session: Session, tenant_id: int, name: str) -> int:
    cursor: str | None = None
    while True:
        page = segments.list_segments(
            session=session, tenant_id=tenant_id, limit=MAX_LIMIT, cursor=cursor
        )
        for segment in page.items:
            if segment.name == name.strip():
                return segment.id
        if page.next_cursor is None:
            raise fail(f"no segment named {name!r}")
        cursor = page.next_cursor


def _start(session: Session, runtime: Runtime, tenant_id: int, campaign_id: int) -> Campaign:
    return campaigns.start_campaign(
        session=session,
        tenant_id=tenant_id,
        campaign_id=campaign_id,
        now=runtime.clock.now(),
        ttl_seconds=runtime.settings.message_ttl_seconds,
    )


def _pause(session: Session, runtime: Runtime, tenant_id: int, campaign_id: int) -> Campaign:
    return campaigns.pause_campaign(
        session=session, tenant_id=tenant_id, campaign_id=campaign_id, now=runtime.clock.now()
    )


def _resume(session: Session, runtime: Runtime, tenant_id: int, campaign_id: int) -> Campaign:
    return campaigns.resume_campaign(
        session=session, tenant_id=tenant_id, campaign_id=campaign_id, now=runtime.clock.now()
    )


def _cancel(session: Session, runtime: Runtime, tenant_id: int, campaign_id: int) -> Campaign:
    return campaigns.cancel_campaign(
        session=session, tenant_id=tenant_id, campaign_id=campaign_id, now=runtime.clock.now()
    )


Action = Callable[[Session, Runtime, int, int], Campaign]
ACTIONS: dict[str, Action] = {
    "start": _start,
    "pause": _pause,
    "resume": _resume,
    "cancel": _cancel,
}
PAST = {"start": "started", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}


def _act(
    action: str,
    campaign_id: int,
    tenant: str | None,
    url: str | None,
    key: str | None,
    *,
    follow: bool = False,
    interval: float = POLL_SECONDS,
) -> None:
    target = choose_target(tenant, url, key)
    if target.remote is not None:
        with target.remote as api, remote_errors():
            _act_remote(api, action, campaign_id)
            if follow:
                _show(lambda: CampaignSnapshot.from_api(api.campaign(campaign_id)), True, interval)
        return
    assert target.tenant is not None
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            owner = tenant_id_of(session, target.tenant)
            campaign = ACTIONS[action](session, runtime, owner, campaign_id)
            state, recipients = campaign.status, campaign.recipient_count
        console.print(
            f"campaign {campaign_id} {PAST[action]}: now {state}, {recipients:,} recipients"
        )
        if follow:
            _show(lambda: _read(runtime, owner, campaign_id), True, interval)


def _act_remote(api: RemoteApi, action: str, campaign_id: int) -> None:
    body = api.campaign_action(campaign_id, action)
    console.print(
        f"campaign {campaign_id} {PAST[action]}: now {body.get('status')},"
        f" {int(body.get('recipient_count', 0)):,} recipients"
    )


@campaign_app.command("start")
def start(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    follow: FollowOption = False,
) -> None:
    """Start a draft: fan it out to its audience now (or at its scheduled time)."""
    _act("start", campaign_id, tenant, url, key, follow=follow)


@campaign_app.command("pause")
def pause(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Pause a running or preparing campaign: nothing not yet being sent goes out until it is resumed."""
    _act("pause", campaign_id, tenant, url, key)


@campaign_app.command("resume")
def resume(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Resume a paused campaign."""
    _act("resume", campaign_id, tenant, url, key)


@campaign_app.command("cancel")
def cancel(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Cancel a campaign: every message not yet being sent is cancelled."""
    _act("cancel", campaign_id, tenant, url, key)


@campaign_app.command("update")
def update(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    name: str | None = typer.Option(None, help="A new name.", show_default=False),
    data: DataOption = None,
    schedule: str | None = typer.Option(
        None,
        help="Start at this time instead, ISO 8601 with zone (2030-01-31T09:00:00Z).",
        show_default=False,
    ),
    unschedule: bool = typer.Option(
        False, "--unschedule", help="Clear the start time (a scheduled campaign becomes a draft)."
    ),
    priority: int | None = typer.Option(
        None, min=MIN_PRIORITY, max=MAX_PRIORITY, show_default=False
    ),
    category: str | None = typer.Option(None, help="A new category.", show_default=False),
    send_window: SendWindowOption = None,
) -> None:
    """Change a draft or scheduled campaign; what is not given keeps its value."""
    if schedule is not None and unschedule:
        raise fail("give --schedule or --unschedule, not both")
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = name
    if data is not None:
        changes["data"] = parse_data(data)
    if schedule is not None or unschedule:
        changes["scheduled_at"] = parse_time(schedule, option="--schedule")
    if priority is not None:
        changes["priority"] = priority
    if category is not None:
        changes["category"] = category
    window = parse_send_window_option(send_window)
    if window is not None:
        changes["send_window"] = window
    if not changes:
        raise fail("nothing to change: give at least one option (see --help)")
    target = choose_target(tenant, url, key)
    if target.remote is not None:
        remote = {field: _as_json(value) for field, value in changes.items()}
        with target.remote as api, remote_errors():
            body = api.update_campaign(campaign_id, remote)
        console.print(f"campaign {campaign_id} changed: now {body.get('status')}")
        return
    assert target.tenant is not None
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        campaign = campaigns.update_campaign(
            session=session,
            tenant_id=tenant_id_of(session, target.tenant),
            campaign_id=campaign_id,
            changes=changes,
            now=runtime.clock.now(),
        )
        console.print(f"campaign {campaign_id} changed: now {campaign.status}")


def _as_json(value: object) -> object:
    if isinstance(value, SendWindow):
        return value.to_json()
    return value.isoformat() if isinstance(value, datetime) else value


@campaign_app.command("delete")
def delete(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Delete a draft campaign (cancel any other)."""
    target = choose_target(tenant, url, key)
    if target.remote is not None:
        with target.remote as api, remote_errors():
            api.delete_campaign(campaign_id)
    else:
        assert target.tenant is not None
        with open_runtime() as runtime, unit_of_work(runtime) as session:
            campaigns.delete_campaign(
                session=session,
                tenant_id=tenant_id_of(session, target.tenant),
                campaign_id=campaign_id,
                now=runtime.clock.now(),
            )
    console.print(f"campaign {campaign_id} deleted")


@campaign_app.command("stats")
def stats(
    campaign_id: CampaignId,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    csv_path: Path | None = typer.Option(
        None,
        "--csv",
        help="Also write every recipient's results (status, last event, first open and click) "
        "to this new file (mode 0600), as GET /v1/campaigns/{id}/recipients does.",
        dir_okay=False,
    ),
) -> None:
    """How a campaign did: delivery, people's opens and clicks (machines' apart), rates against
    delivered, and its links; the same figures as GET /v1/campaigns/{id}/stats."""
    target = choose_target(tenant, url, key)
    if csv_path is not None and csv_path.exists():
        raise fail(f"{csv_path} already exists; give another --csv or remove it")
    if target.remote is not None:
        with target.remote as api, remote_errors():
            figures = api.campaign_stats(campaign_id)
            _print_stats(campaign_id, figures)
            if csv_path is not None:
                with _private(csv_path) as sink:
                    api.download(
                        f"/v1/campaigns/{campaign_id}/recipients", {"format": "csv"}, sink.write
                    )
                console.print(f"wrote {csv_path}", highlight=False)
        return
    assert target.tenant is not None
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            owner = tenant_id_of(session, target.tenant)
            found = campaign_stats.campaign_stats(
                session=session, tenant_id=owner, campaign_id=campaign_id
            )
            selection = campaign_results.results_selection(
                session=session, tenant_id=owner, campaign_id=campaign_id
            )
        _print_stats(campaign_id, asdict(found))
        if csv_path is not None:
            with _private(csv_path) as sink:
                for chunk in campaign_results.export_results(
                    runtime.sessions,
                    selection=selection,
                    file_format=campaign_results.ResultsFormat.csv,
                ):
                    sink.write(chunk)
            console.print(f"wrote {csv_path}", highlight=False)


def _private(path: Path) -> BinaryIO:
    """``path`` created mode 0600 and open for writing; never an existing file (it may be
    someone else's, and the export holds personal data)."""
    try:
        fd = create_private_file(path)
    except OSError as exc:
        raise fail(f"cannot create {path}: {exc.strerror}") from None
    if fd is None:
        raise fail(f"{path} already exists; give another --csv or remove it")
    return os.fdopen(fd, "wb")


def _rate(value: float) -> str:
    return f"{value * 100:.1f} %"


def _print_stats(campaign_id: int, figures: dict[str, Any]) -> None:
    """The API's stats document (or the service's, as a dict) as three tables."""
    f = figures
    delivery = Table("delivery", "count", "rate", title=f"Campaign {campaign_id}")
    delivery.add_row("recipients", f"{f['recipient_count']:,}", "")
    delivery.add_row("sent", f"{f['sent']:,}", "")
    delivery.add_row("delivered", f"{f['delivered']:,}", "")
    delivery.add_row("bounced (hard)", f"{f['bounced_hard']:,}", _rate(f["bounce_rate"]))
    delivery.add_row("bounced (soft)", f"{f['bounced_soft']:,}", "")
    delivery.add_row("complaints", f"{f['complaints']:,}", _rate(f["complaint_rate"]))
    delivery.add_row("unsubscribes", f"{f['unsubscribes']:,}", _rate(f["unsubscribe_rate"]))
    console.print(delivery)
    engagement = Table("engagement", "people (unique)", "people (total)", "machines", "rate")
    engagement.add_row(
        "opens",
        f"{f['opens_unique']:,}",
        f"{f['opens_total']:,}",
        f"{f['opens_machine']:,}",
        _rate(f["open_rate"]),
    )
    engagement.add_row(
        "clicks",
        f"{f['clicks_unique']:,}",
        f"{f['clicks_total']:,}",
        f"{f['clicks_machine']:,}",
        _rate(f["click_rate"]),
    )
    engagement.add_row("click-to-open", "", "", "", _rate(f["click_to_open_rate"]))
    console.print(engagement)
    console.print(
        "Rates are against delivered; machines (privacy proxies, link scanners) are never counted "
        "as people.",
        highlight=False,
    )
    if f["links"]:
        links = Table("link", "people (unique)", "people (total)", "machines")
        for link in f["links"]:
            links.add_row(
                escape(link["url"]),
                f"{link['clicks_unique']:,}",
                f"{link['clicks_total']:,}",
                f"{link['clicks_machine']:,}",
            )
        console.print(links)
