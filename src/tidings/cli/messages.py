"""``tidings send`` (one transactional message) and ``tidings queue`` (what is waiting, and since when)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tidings.cli.common import (
    DataOption,
    KeyOption,
    SendWindowOption,
    Target,
    TenantOption,
    UrlOption,
    choose_target,
    console,
    open_runtime,
    parse_data,
    parse_send_window_option,
    parse_time,
    remote_errors,
    tenant_id_of,
    unit_of_work,
)
from tidings.domain import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, MessageStatus
from tidings.queue import status as queue_status
from tidings.queue.clock import db_now
from tidings.scheduling.windows import SendWindow
from tidings.services import messages, reminders
from tidings.services.reminders import PASSED

#: Columns of ``tidings queue``, in the order a message moves through them.
QUEUE_COLUMNS = (
    MessageStatus.queued,
    MessageStatus.paused,
    MessageStatus.sending,
    MessageStatus.sent,
    MessageStatus.failed,
    MessageStatus.dead,
    MessageStatus.cancelled,
    MessageStatus.suppressed,
)


def _content(value: str | None, option: str) -> str | None:
    """The option's text, or a file's when it is ``@path``."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint=option) from None


def send(
    to: str = typer.Option(..., help="The recipient's address."),
    subject: str | None = typer.Option(
        None, help="Subject (a template); without --template.", show_default=False
    ),
    text: str | None = typer.Option(None, help="Plain-text body, or @FILE.", show_default=False),
    html: str | None = typer.Option(None, help="HTML body, or @FILE.", show_default=False),
    template: int | None = typer.Option(
        None,
        min=1,
        help="A stored template's id instead of --subject/--text/--html.",
        show_default=False,
    ),
    data: DataOption = None,
    category: str | None = typer.Option(
        None, help="Category (preferences honour it).", show_default=False
    ),
    reference: str | None = typer.Option(
        None, help="A group name, to cancel together later.", show_default=False
    ),
    idempotency_key: str | None = typer.Option(
        None, help="Repeat-safe: the same key never sends twice.", show_default=False
    ),
    priority: int = typer.Option(DEFAULT_PRIORITY, min=MIN_PRIORITY, max=MAX_PRIORITY),
    event_at: str | None = typer.Option(
        None,
        "--event-at",
        help="An event's time with its zone (2030-03-01T15:00:00+01:00): send reminders before"
        " it instead, one per --offset, named by --reference; templates see it as event_at.",
        show_default=False,
    ),
    offsets: list[str] | None = typer.Option(
        None,
        "--offset",
        help="With --event-at, repeatable: how long before the event a reminder goes"
        " (24h, 2h, 30m, 1d12h).",
        show_default=False,
    ),
    send_window: SendWindowOption = None,
    tenant: TenantOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Send one transactional message (it outranks campaign mail in the queue), or reminders
    before an event (--event-at, --offset)."""
    event_time = _reminder_options(event_at, offsets, reference, idempotency_key)
    window = parse_send_window_option(send_window)
    fields: dict[str, Any] = {
        "to": to,
        "template_id": template,
        "subject": subject,
        "html": _content(html, "--html"),
        "text": _content(text, "--text"),
        "data": parse_data(data),
        "category": category,
        "priority": priority,
        "reference": reference,
    }
    target = choose_target(tenant, url, key)
    if event_time is not None:
        assert offsets is not None and reference is not None
        _remind(target, fields, event_time, offsets, window)
        return
    if target.remote is not None:
        remote_fields = {**fields, "send_window": window.to_json() if window else None}
        with target.remote as api, remote_errors():
            body, created = api.send_message(
                {k: v for k, v in remote_fields.items() if v is not None},
                idempotency_key=idempotency_key,
            )
        not_before = datetime.fromisoformat(body["not_before"])
        _print_sent(body["id"], body["status"], body.get("last_error"), created, not_before)
        return
    assert target.tenant is not None
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            enqueued = messages.send_message(
                session=session,
                tenant_id=tenant_id_of(session, target.tenant),
                request=messages.MessageRequest(
                    **fields, send_window=window, idempotency_key=idempotency_key
                ),
                renderer=runtime.renderer,
                default_ttl_seconds=runtime.settings.message_ttl_seconds,
                now=runtime.clock.now(),
            )
            message = enqueued.message
        _print_sent(
            message.id, message.status, message.last_error, enqueued.created, message.not_before
        )


def _reminder_options(
    event_at: str | None,
    offsets: list[str] | None,
    reference: str | None,
    idempotency_key: str | None,
) -> datetime | None:
    """The event's time when ``send`` makes reminders, once its options go together."""
    if event_at is None:
        if offsets:
            raise typer.BadParameter("needs --event-at", param_hint="--offset")
        return None
    if not offsets:
        raise typer.BadParameter(
            "give one --offset or more, e.g. --offset 24h", param_hint="--offset"
        )
    if reference is None:
        raise typer.BadParameter(
            "--event-at needs --reference, which names the event", param_hint="--reference"
        )
    if idempotency_key is not None:
        raise typer.BadParameter(
            "reminders are repeat-safe by --reference and --offset already",
            param_hint="--idempotency-key",
        )
    return parse_time(event_at, option="--event-at")


#: One line of ``send --event-at``: what happened to an offset ("created", "existing" or
#: "skipped"), the offset as given, its message, its status (why, when skipped), its time.
ReminderLine = tuple[str, str, int | None, str | None, datetime]


def _remind(
    target: Target,
    fields: dict[str, Any],
    event_at: datetime,
    offsets: list[str],
    window: SendWindow | None,
) -> None:
    """Reminders before ``event_at``, one line per offset."""
    reference = fields.pop("reference")
    lines: list[ReminderLine] = []
    if target.remote is not None:
        body = {k: v for k, v in fields.items() if v is not None}
        body.update(reference=reference, event_at=event_at.isoformat(), offsets=offsets)
        if window is not None:
            body["send_window"] = window.to_json()
        with target.remote as api, remote_errors():
            answer = api.create_reminders(body)
        for word in ("created", "existing", "skipped"):
            for item in answer[word]:
                send_at = datetime.fromisoformat(item["send_at"])
                lines.append(
                    (
                        word,
                        item["offset"],
                        item["message_id"],
                        item.get("status") or item.get("reason"),
                        send_at,
                    )
                )
    else:
        assert target.tenant is not None
        with open_runtime() as runtime, unit_of_work(runtime) as session:
            done = reminders.create_reminders(
                session=session,
                tenant_id=tenant_id_of(session, target.tenant),
                request=reminders.ReminderRequest(
                    reference=reference,
                    event_at=event_at,
                    offsets=offsets,
                    message=messages.MessageRequest(**fields, send_window=window),
                ),
                renderer=runtime.renderer,
                default_ttl_seconds=runtime.settings.message_ttl_seconds,
                now=runtime.clock.now(),
            )
        for word, placed in [("created", done.created), ("existing", done.existing)]:
            for p in placed:
                r = p.reminder
                lines.append((word, p.offset, r.message_id, r.status.value, r.send_at))
        lines += [("skipped", s.offset, None, s.reason, s.send_at) for s in done.skipped]
    for word, offset, message_id, status, send_at in lines:
        when = send_at.astimezone(UTC).isoformat(sep=" ", timespec="seconds")
        if word == "skipped":
            why = f"its time ({when}) has passed" if status == PASSED else f"{status} ({when})"
            console.print(f"reminder {escape(offset)}: skipped, {escape(why)}")
        elif word == "existing":
            console.print(
                f"reminder {escape(offset)}: message {message_id} was already made:"
                f" {status}, {when}"
            )
        else:
            console.print(f"reminder {escape(offset)}: message {message_id} {status} for {when}")


#: A message held this much past now is said to wait (its sending window is closed).
WAIT_WORTH_SAYING = timedelta(seconds=1)


def _print_sent(
    message_id: int, status: str, reason: str | None, created: bool, not_before: datetime
) -> None:
    if not created:
        console.print(f"message {message_id} was already accepted with this key: {status}")
    elif status == MessageStatus.suppressed.value:
        console.print(
            f"message {message_id} suppressed, it will not be sent: {escape(reason or '')}"
        )
    elif not_before > datetime.now(UTC) + WAIT_WORTH_SAYING:
        console.print(
            f"message {message_id} {status}, not before {not_before:%Y-%m-%d %H:%M:%S} UTC"
        )
    else:
        console.print(f"message {message_id} {status}")


def queue(
    tenant: str | None = typer.Option(
        None, help="Only this tenant (default: every tenant).", show_default=False
    ),
) -> None:
    """Messages by status for each tenant, the oldest one waiting, and the workers alive."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenant_id_of(session, tenant) if tenant is not None else None
        now = db_now(session)
        overview = queue_status.queue_overview(session=session, now=now, tenant_id=owner)
        oldest = queue_status.oldest_waiting(session=session, now=now, tenant_id=owner)
    if not overview.tenants:
        console.print("the queue is empty" + (f" for {escape(tenant)}" if tenant else ""))
    else:
        # Only the statuses that occur: the table stays readable in a narrow terminal.
        shown = [s for s in QUEUE_COLUMNS if any(t.counts.get(s.value) for t in overview.tenants)]
        table = Table("tenant", "ready", *(s.value for s in shown), "total")
        for row in overview.tenants:
            table.add_row(
                escape(row.tenant_name),
                f"{row.ready:,}",
                *(f"{row.counts.get(s.value, 0):,}" for s in shown),
                f"{row.total:,}",
            )
        console.print(table)
    if oldest is None:
        console.print("nothing is waiting")
    else:
        names = {t.tenant_id: t.tenant_name for t in overview.tenants}
        waited = timedelta(seconds=round(oldest.age_seconds(now)))
        console.print(
            f"oldest waiting: message {oldest.message_id} to {escape(oldest.to_address)}"
            f" ({escape(names.get(oldest.tenant_id, str(oldest.tenant_id)))}), waiting {waited}"
        )
    console.print(f"workers alive: {overview.workers_alive}")
    if overview.ready and not overview.workers_alive:
        console.print(
            "[yellow]warning:[/] messages are waiting but no worker is running:"
            " start `tidings worker` or `tidings serve`"
        )
