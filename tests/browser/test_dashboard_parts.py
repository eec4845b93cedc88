"""The dashboard's pure parts, without a server: session cookies and CSRF tokens, the charts'
geometry, and reading the outbox maildir back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from tidings.services.campaign_stats import MAX_POINTS, TimelinePoint
from tidings.web import security
from tidings.web.chart import (
    CHART_HEIGHT,
    MAX_BARS,
    PLOT_HEIGHT,
    engagement_chart,
    sends_per_minute_chart,
)
from tidings.web.inbox import outbox_dir, read_headers, read_message

SECRET = "s" * 48
NOW = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def test_a_session_cookie_reads_back_only_with_the_same_secret_and_within_its_age() -> None:
    value = security.issue_session(secret=SECRET, key_id=42, now=NOW)
    claims = security.read_session(secret=SECRET, value=value, now=NOW + timedelta(hours=1))
    assert claims is not None and claims.key_id == 42
    assert security.read_session(secret="t" * 48, value=value, now=NOW) is None
    late = NOW + security.SESSION_MAX_AGE + timedelta(seconds=1)
    assert security.read_session(secret=SECRET, value=value, now=late) is None
    early = NOW - security.CLOCK_SKEW - timedelta(seconds=1)
    assert security.read_session(secret=SECRET, value=value, now=early) is None
    for broken in ("", "1.2.3", "x" * 500, value.replace("42.", "43.", 1), value + "a"):
        assert security.read_session(secret=SECRET, value=broken, now=NOW) is None


def test_each_sign_in_gets_its_own_csrf_token_and_purposes_never_mix() -> None:
    one = security.issue_session(secret=SECRET, key_id=1, now=NOW)
    two = security.issue_session(secret=SECRET, key_id=1, now=NOW)
    assert one != two
    token = security.csrf_token(secret=SECRET, session_value=one)
    assert token != security.csrf_token(secret=SECRET, session_value=two)
    assert token != security.login_csrf_token(secret=SECRET, nonce=one)
    assert security.tokens_match(token, token)
    assert not security.tokens_match(None, token)
    assert not security.tokens_match(token[:-1], token)


def test_the_chart_fills_quiet_minutes_and_keeps_the_latest_hour() -> None:
    start = datetime(2030, 5, 1, 9, 0, tzinfo=UTC)
    chart = sends_per_minute_chart([(start, 10), (start + timedelta(minutes=3), 5)])
    assert [bar.count for bar in chart.bars] == [10, 0, 0, 5]
    assert [bar.height for bar in chart.bars] == [CHART_HEIGHT, 0, 0, CHART_HEIGHT // 2]
    assert chart.total == 15 and chart.peak == 10
    long = sends_per_minute_chart([(start + timedelta(minutes=i), 1000 - i) for i in range(90)])
    assert len(long.bars) == MAX_BARS
    assert long.bars[-1].minute == start + timedelta(minutes=89)
    assert long.peak == 1000 - 30  # of the minutes shown
    tiny = sends_per_minute_chart([(start, 1000), (start + timedelta(minutes=1), 1)])
    assert tiny.bars[1].height == 1  # a minute with sends never looks empty
    assert sends_per_minute_chart([]).bars == []


def _deliver(maildir: Path, name: str, html: str | None) -> None:
    message = EmailMessage()
    message["From"] = "Tidings <noreply@example.org>"
    message["To"] = "ann@example.com"
    message["Subject"] = "Your code"
    message.set_content("Code 1234")
    if html is not None:
        message.add_alternative(html, subtype="html")
    (maildir / "new").mkdir(parents=True, exist_ok=True)
    (maildir / "new" / name).write_bytes(message.as_bytes())


def test_the_engagement_chart_starts_with_the_campaign_and_fills_quiet_intervals() -> None:
    assert engagement_chart([], 300, since=NOW) is None
    points = [
        TimelinePoint(NOW + timedelta(minutes=10), 4, 1, 2, 0),
        TimelinePoint(NOW + timedelta(minutes=25), 1, 0, 0, 3),
    ]
    chart = engagement_chart(points, 300, since=NOW + timedelta(minutes=2))
    assert chart is not None
    # From the interval the campaign started in (12:00) to the last hit's (12:25), every 5 minutes.
    assert chart.times == [NOW + timedelta(minutes=m) for m in range(0, 30, 5)]
    assert [s.key for s in chart.series] == ["opens", "clicks", "opens_machine", "clicks_machine"]
    opens, clicks, opens_machine, clicks_machine = chart.series
    assert opens.values == [0, 0, 4, 0, 0, 1] and clicks_machine.values == [0, 0, 0, 0, 0, 3]
    assert (opens.total, clicks.total, opens_machine.total) == (5, 1, 2)
    assert chart.interval_text == "5 minutes" and chart.peak == 4
    # The scale's top halves evenly; a count sits at its height on it; x runs edge to edge.
    assert [t.value for t in chart.ticks] == [0, 2, 4]
    assert opens.points[2][1] == chart.top and opens.points[0][1] == chart.bottom
    assert opens.points[0][0] == chart.left and opens.points[-1][0] == chart.right
    assert chart.bottom - chart.top == PLOT_HEIGHT
    assert chart.rows()[2] == (NOW + timedelta(minutes=10), [4, 1, 2, 0])


def test_the_engagement_chart_keeps_the_latest_points_and_reads_one_alone() -> None:
    many = [TimelinePoint(NOW + timedelta(minutes=m), 1, 0, 0, 0) for m in range(300)]
    chart = engagement_chart(many, 60, since=NOW)
    assert chart is not None
    assert len(chart.times) == MAX_POINTS and chart.times[-1] == NOW + timedelta(minutes=299)
    assert not chart.markers  # too many points: told apart by the dashes alone
    alone = engagement_chart([TimelinePoint(NOW, 0, 0, 0, 1)], 3600)
    assert alone is not None and len(alone.times) == 1 and alone.markers
    assert alone.interval_text == "hour" and [t.value for t in alone.ticks] == [0, 1, 2]
    assert alone.series[0].points[0][0] == (alone.left + alone.right) / 2


def test_the_outbox_is_read_back_by_file_name_only_inside_the_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "outbox"
    assert outbox_dir(f"outbox://{maildir}") == maildir
    assert outbox_dir("smtp://mail.example.org:25") is None
    _deliver(maildir, "1.M1P1Q1.host.eml", "<p>Code <b>1234</b></p>")
    shown = read_message(maildir, "1.M1P1Q1.host.eml")
    assert shown is not None
    assert shown.subject == "Your code"
    assert shown.html is not None and "<b>1234</b>" in shown.html
    assert shown.text is not None and "Code 1234" in shown.text
    assert read_headers(maildir, "1.M1P1Q1.host.eml")["To"] == "ann@example.com"
    (tmp_path / "secret.eml").write_text("Subject: not yours\n\nx")
    for name in ("../secret.eml", "..", "", "/etc/passwd", "missing.eml"):
        assert read_message(maildir, name) is None, name
        assert read_headers(maildir, name) == {}, name


def test_a_message_a_mail_client_already_read_is_found_in_cur(tmp_path: Path) -> None:
    maildir = tmp_path / "outbox"
    _deliver(maildir, "2.M2P2Q2.host.eml", None)
    (maildir / "cur").mkdir()
    (maildir / "new" / "2.M2P2Q2.host.eml").rename(maildir / "cur" / "2.M2P2Q2.host.eml:2,S")
    shown = read_message(maildir, "2.M2P2Q2.host.eml")
    assert shown is not None and shown.html is None and shown.text is not None
