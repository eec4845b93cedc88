"""Progress the CLI shows: a campaign followed live until it ends, and a file being imported.

A campaign is read the same way whether it comes from the database or from a remote API
(``CampaignSnapshot``); ``follow_campaign`` polls one of them and draws sent, failed, the rate and
the time left on one Rich progress bar. Nothing here writes anything.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tidings.db.models import Campaign
from tidings.domain import CampaignStatus
from tidings.services.campaigns import CampaignProgress

POLL_SECONDS = 0.5  # how often a followed campaign is read again
RATE_WINDOW_SECONDS = 10.0  # the rate shown is over this much recent time
ENDED = frozenset({CampaignStatus.completed, CampaignStatus.cancelled, CampaignStatus.failed})
READ_CHUNK_BYTES = 256 * 1024  # an import reads its file in pieces of this size


@dataclass(frozen=True, slots=True)
class CampaignSnapshot:
    """A campaign's status and counts at one moment, from the database or the API alike."""

    id: int
    name: str
    status: CampaignStatus
    status_reason: str | None
    recipient_count: int
    sent: int
    failed: int  # failed and dead
    dead: int
    suppressed: int
    cancelled: int
    pending: int
    pending_until_window: int  # of which waiting for their sending window to open
    progress_percentage: float
    send_rate_per_minute: int
    estimated_completion: datetime | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def finished(self) -> int:
        """Recipients with a final outcome (sent, failed, suppressed or cancelled)."""
        return self.recipient_count - self.pending

    @classmethod
    def of(cls, campaign: Campaign, progress: CampaignProgress) -> CampaignSnapshot:
        return cls(
            id=campaign.id,
            name=campaign.name,
            status=CampaignStatus(campaign.status),
            status_reason=campaign.status_reason,
            **asdict(progress),
            created_at=campaign.created_at,
            started_at=campaign.started_at,
            completed_at=campaign.completed_at,
        )

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> CampaignSnapshot:
        """From ``GET /v1/campaigns/{id}`` (``CampaignOut``)."""

        def when(key: str) -> datetime | None:
            value = body.get(key)
            return datetime.fromisoformat(value) if value else None

        created = when("created_at")
        assert created is not None
        return cls(
            id=int(body["id"]),
            name=str(body["name"]),
            status=CampaignStatus(body["status"]),
            status_reason=body.get("status_reason"),
            recipient_count=int(body["recipient_count"]),
            sent=int(body["sent"]),
            failed=int(body["failed"]),
            dead=int(body.get("dead", 0)),
            suppressed=int(body["suppressed"]),
            cancelled=int(body.get("cancelled", 0)),
            pending=int(body["pending"]),
            pending_until_window=int(body.get("pending_until_window", 0)),
            progress_percentage=float(body["progress_percentage"]),
            send_rate_per_minute=int(body.get("send_rate_per_minute", 0)),
            estimated_completion=when("estimated_completion"),
            created_at=created,
            started_at=when("started_at"),
            completed_at=when("completed_at"),
        )


def status_table(snapshot: CampaignSnapshot) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    status = snapshot.status.value + (
        f" ({snapshot.status_reason})" if snapshot.status_reason else ""
    )
    rows: list[tuple[str, str]] = [
        ("campaign", f"{snapshot.id} {snapshot.name}"),
        ("status", status),
        ("recipients", f"{snapshot.recipient_count:,}"),
        ("sent", f"{snapshot.sent:,}"),
        (
            "failed",
            f"{snapshot.failed:,}" + (f" ({snapshot.dead:,} dead)" if snapshot.dead else ""),
        ),
        ("suppressed", f"{snapshot.suppressed:,}"),
        ("cancelled", f"{snapshot.cancelled:,}"),
        (
            "pending",
            f"{snapshot.pending:,}"
            + (
                f" ({snapshot.pending_until_window:,} waiting for their window)"
                if snapshot.pending_until_window
                else ""
            ),
        ),
        ("progress", f"{snapshot.progress_percentage:.1f} %"),
        ("rate", f"{snapshot.send_rate_per_minute:,} / minute"),
    ]
    if snapshot.estimated_completion and not snapshot.ended:
        rows.append(("done by", _clock(snapshot.estimated_completion)))
    rows.append(("created", _clock(snapshot.created_at)))
    if snapshot.started_at:
        rows.append(("started", _clock(snapshot.started_at)))
    if snapshot.completed_at:
        rows.append(("ended", _clock(snapshot.completed_at)))
    for label, value in rows:
        table.add_row(label, value)
    return table


def summary_line(snapshot: CampaignSnapshot) -> str:
    parts = [f"{snapshot.sent:,} sent", f"{snapshot.failed:,} failed"]
    if snapshot.suppressed:
        parts.append(f"{snapshot.suppressed:,} suppressed")
    if snapshot.cancelled:
        parts.append(f"{snapshot.cancelled:,} cancelled")
    if snapshot.pending:
        parts.append(f"{snapshot.pending:,} pending")
    return f"campaign {snapshot.id} {snapshot.status.value}: " + ", ".join(parts)


class RateMeter:
    """Outcomes per second over the last ``window`` seconds of readings (monotonic clock)."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._readings: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> float | None:
        """Record ``done`` outcomes so far at time ``at``; the rate, once two readings span time."""
        self._readings.append((at, done))
        while len(self._readings) > 2 and at - self._readings[1][0] >= self.window:
            self._readings.popleft()
        first_at, first_done = self._readings[0]
        if at - first_at <= 0:
            return None
        return max(0.0, (done - first_done) / (at - first_at))


def follow_campaign(
    poll: Callable[[], CampaignSnapshot],
    *,
    console: Console,
    interval: float = POLL_SECONDS,
    halt: threading.Event | None = None,
) -> CampaignSnapshot:
    """Draw the campaign's progress until it ends (or ``halt`` is set); the last snapshot read.

    A draft is returned at once: nothing will move until someone starts it.
    """
    snapshot = poll()
    if snapshot.ended or snapshot.status is CampaignStatus.draft:
        return snapshot
    halt = halt or threading.Event()
    meter = RateMeter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        console=console,
    ) as progress:
        task = progress.add_task(snapshot.name, total=None, counts="", rate="", eta="")
        while True:
            rate = meter.add(time.monotonic(), snapshot.sent + snapshot.failed)
            progress.update(task, **_bar_fields(snapshot, rate))
            if snapshot.ended or halt.wait(interval):
                break
            snapshot = poll()
    return snapshot


def _bar_fields(snapshot: CampaignSnapshot, rate: float | None) -> dict[str, Any]:
    if rate is None and snapshot.send_rate_per_minute:
        rate = snapshot.send_rate_per_minute / 60
    if snapshot.status is not CampaignStatus.running or not snapshot.pending:
        eta = ""
    elif snapshot.estimated_completion is not None:  # knows the throttle and sending windows
        left = (snapshot.estimated_completion - datetime.now(UTC)).total_seconds()
        eta = f"ETA {_duration(max(left, 0.0))}"
    elif rate:
        eta = f"ETA {_duration(snapshot.pending / rate)}"
    else:
        eta = "ETA -"
    counts = f"{snapshot.sent:,} sent  {snapshot.failed:,} failed"
    if snapshot.suppressed:
        counts += f"  {snapshot.suppressed:,} suppressed"
    description = snapshot.name
    if snapshot.status is not CampaignStatus.running:
        description = f"{snapshot.name} ({snapshot.status.value})"
    return {
        "description": description,
        "total": snapshot.recipient_count or None,
        "completed": snapshot.finished,
        "counts": counts,
        "rate": f"{rate:,.1f}/s" if rate is not None else "",
        "eta": eta,
    }


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _clock(moment: datetime) -> str:
    return moment.astimezone().isoformat(sep=" ", timespec="seconds")


# -- import --------------------------------------------------------------------------------------


class ImportProgress:
    """A Rich bar over a file's bytes, with rows read and rows per second, fed by ``chunks()``."""

    def __init__(self, console: Console, total_bytes: int, label: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rows]:>12,} rows"),
            TextColumn("{task.fields[rate]:>10,.0f} rows/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._progress.add_task(label, total=total_bytes, rows=0, rate=0.0)
        self._started = time.monotonic()
        self.rows = 0
        self.bytes = 0

    def __enter__(self) -> ImportProgress:
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def chunks(self, handle: IO[bytes]) -> Iterator[bytes]:
        """The file's content as the import reads it, counting bytes and lines on the way."""
        while chunk := handle.read(READ_CHUNK_BYTES):
            self.bytes += len(chunk)
            self.rows += chunk.count(b"\n")
            elapsed = max(time.monotonic() - self._started, 1e-6)
            self._progress.update(
                self._task, completed=self.bytes, rows=self.rows, rate=self.rows / elapsed
            )
            yield chunk
        self._progress.update(self._task, description="saving")
