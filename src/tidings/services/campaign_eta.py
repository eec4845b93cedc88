"""A running campaign's expected finish and the messages waiting for their sending window, from
what the queue holds: its pending messages grouped by zone, the tenant's throttle, and the pace it
has been sending at (``scheduling.estimate`` does the arithmetic).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, distinct, func, literal, select
from sqlalchemy.orm import Session

from tidings.db.models import Campaign, Message, Throttle
from tidings.db.types import UTCDateTime
from tidings.domain import MessageStatus
from tidings.scheduling.estimate import PendingGroup, RollingLimit, Send, estimate_finish
from tidings.scheduling.windows import FALLBACK_TIMEZONE, is_open, window_from_json

RATE_WINDOW = timedelta(seconds=60)  # "the last minute"
#: The pace is measured over the latest half of the run, at most RATE_WINDOW: the first moments
#: (a throttle's initial burst, the workers filling their slots) are not the pace. Until that half
#: holds MIN_SPAN_FOR_PACE of sends, the throttle's limit stands in for it.
#: Fewer sends than this in the last minute say too little about the pace.
MIN_SENDS_FOR_PACE = 10
MIN_SPAN_FOR_PACE = 0.5  # seconds between the first and the last of them
#: Past sends in a throttle window are spread over this many instants between the first and last.
HISTORY_POINTS = 60
#: The throttle's limits: (column, window in seconds).
LIMIT_WINDOWS = (
    ("per_second", 1.0),
    ("per_minute", 60.0),
    ("per_hour", 3600.0),
    ("per_day", 86400.0),
)


@dataclass(frozen=True, slots=True)
class SendsIn:
    """A campaign's sends in a stretch of time up to now."""

    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    instants: int = 0  # distinct sent_at values: a worker records a batch's outcomes at once

    def pace(self) -> float | None:
        """Messages a second, when there are enough sends to tell.

        The sends fall on ``instants`` batch timestamps, ``span`` apart from first to last: each
        batch stands for the stretch since the one before, so the sends cover ``span`` plus one
        mean gap (for one send a batch, that is ``(count - 1) / span``).
        """
        if self.count < MIN_SENDS_FOR_PACE or self.first is None or self.last is None:
            return None
        span = (self.last - self.first).total_seconds()
        if span < MIN_SPAN_FOR_PACE or self.instants < 2:
            return None
        return self.count / (span * self.instants / (self.instants - 1))

    def spread(self) -> list[Send]:
        """The sends as a few instants evenly between the first and the last."""
        if not self.count or self.first is None or self.last is None:
            return []
        points = min(self.count, HISTORY_POINTS)
        step = (self.last - self.first) / max(points - 1, 1)
        share, extra = divmod(self.count, points)
        return [Send(self.first + step * i, share + (1 if i < extra else 0)) for i in range(points)]


@dataclass(frozen=True, slots=True)
class SendFigures:
    """A campaign's sent messages, as three stretches up to now."""

    last_minute: int = 0  # sent in the last RATE_WINDOW
    latest: SendsIn = SendsIn()  # sent in the latest half of its run (at most a minute): the pace
    history: SendsIn = SendsIn()  # sent within its tenant's longest coarse throttle window

    @classmethod
    def of(cls, values: Sequence[Any]) -> SendFigures:
        """From the values of ``send_columns`` on the ``sent`` row."""
        return cls(values[0], SendsIn(*values[1:5]), SendsIn(*values[5:9]))


def send_columns(
    campaigns: Iterable[Campaign], *, now: datetime, lookback: timedelta
) -> list[ColumnElement[Any]]:
    """Aggregates to add to the campaigns' count grouped by (campaign, status): no extra scan."""
    cutoffs = {c.id: _stamp(now - _pace_window(c, now)) for c in campaigns}
    latest = Message.sent_at > case(cutoffs, value=Message.campaign_id, else_=_stamp(now))
    return [
        func.count(case((_sent(Message.sent_at >= now - RATE_WINDOW), 1))),
        *_stretch(_sent(latest)),
        *_stretch(_sent(Message.sent_at > now - lookback)),
    ]


def _pace_window(campaign: Campaign, now: datetime) -> timedelta:
    return min((now - (campaign.started_at or now)) / 2, RATE_WINDOW)


def _sent(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return (Message.status == MessageStatus.sent.value) & condition


def _stretch(sent: ColumnElement[bool]) -> list[ColumnElement[Any]]:
    return [
        func.count(case((sent, 1))),
        func.min(case((sent, Message.sent_at))),
        func.max(case((sent, Message.sent_at))),
        # A worker records a batch's outcomes with one sent_at: the instants the sends fall on.
        func.count(distinct(Message.sent_at)).filter(sent),
    ]


def _stamp(value: datetime) -> ColumnElement[datetime]:
    return literal(value, UTCDateTime())


@dataclass(frozen=True, slots=True)
class Waiting:
    """A running campaign's pending messages by zone: what the estimate simulates."""

    groups: list[PendingGroup]
    until_window: int  # queued, in a zone whose window is closed now


def tenant_limits(*, session: Session, tenant_ids: Iterable[int]) -> dict[int, list[RollingLimit]]:
    """Each tenant's enabled throttle limits, finest window first (none: no entry)."""
    limits: dict[int, list[RollingLimit]] = {}
    for row in session.scalars(
        select(Throttle).where(Throttle.tenant_id.in_(sorted(set(tenant_ids))), Throttle.enabled)
    ):
        found = [
            RollingLimit(count, seconds)
            for column, seconds in LIMIT_WINDOWS
            if (count := getattr(row, column)) is not None
        ]
        if found:
            limits[row.tenant_id] = found
    return limits


def longest_window(limits: Iterable[Sequence[RollingLimit]]) -> timedelta:
    """How far back past sends still count against some coarse limit."""
    seconds = [limit.seconds for found in limits for limit in found[1:]]
    return timedelta(seconds=max(seconds, default=0.0))


def waiting_by_zone(
    *, session: Session, campaigns: Sequence[Campaign], now: datetime
) -> dict[int, Waiting]:
    """For running campaigns with a sending window: their queued and in-flight messages per zone.

    One grouped read of those campaigns' pending rows (index ``campaign_id, status``).
    """
    windowed = {c.id: c for c in campaigns if c.send_window is not None}
    if not windowed:
        return {}
    rows = session.execute(
        select(
            Message.campaign_id,
            Message.window_timezone,
            Message.status,
            func.count(),
            func.min(Message.not_before),
        )
        .where(
            Message.campaign_id.in_(sorted(windowed)),
            Message.status.in_((MessageStatus.queued.value, MessageStatus.sending.value)),
        )
        .group_by(Message.campaign_id, Message.window_timezone, Message.status)
    )
    groups: dict[int, list[PendingGroup]] = defaultdict(list)
    until_window: dict[int, int] = defaultdict(int)
    for campaign_id, zone_name, status, count, ready_at in rows:
        assert campaign_id is not None  # the query filters on it
        stored = windowed[campaign_id].send_window
        assert stored is not None
        window = window_from_json(stored)
        zone_name = zone_name or FALLBACK_TIMEZONE
        if status == MessageStatus.sending.value:  # being sent now, whatever the window says
            groups[campaign_id].append(PendingGroup(count, now))
            continue
        groups[campaign_id].append(PendingGroup(count, ready_at, window, zone_name))
        if not is_open(window, zone_name, now):
            until_window[campaign_id] += count
    return {
        campaign_id: Waiting(groups[campaign_id], until_window[campaign_id])
        for campaign_id in windowed
    }


def estimate_completion(
    *,
    pending: int,
    waiting: Waiting | None,
    limits: Sequence[RollingLimit],
    sends: SendFigures,
    now: datetime,
) -> datetime | None:
    """When a running campaign's last pending message will have started, or None when it cannot
    be told: no throttle and nothing sent in the last minute.

    The pace is the lower of the finest throttle limit and the pace measured over the latest
    sends (a slow server, per-domain limits); with too few sends to measure, the throttle's,
    else the last minute's count over a minute.
    """
    measured = sends.latest.pace()
    throttled = limits[0].count / limits[0].seconds if limits else None
    if measured is not None:
        pace: float | None = min(measured, throttled or measured)
    elif throttled is not None:
        pace = throttled
    else:
        pace = sends.last_minute / RATE_WINDOW.total_seconds() if sends.last_minute else None
    groups = waiting.groups if waiting is not None else [PendingGroup(pending, now)]
    return estimate_finish(
        groups=groups,
        pace=pace,
        limits=limits[1:],
        history=sends.history.spread(),
        now=now,
    )
