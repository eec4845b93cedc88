"""The dashboard's pure parts, without a server: session cookies and CSRF tokens, the chart's
geometry, and reading the outbox maildir back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from tidings.web import security
from tidings.web.chart import CHART_HEIGHT, MAX_BARS, sends_per_minute_chart
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
