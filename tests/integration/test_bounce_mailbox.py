"""The bounce mailbox: DSN and ARF reports, received by SMTP or read from a maildir, matched to
the original message and recorded once; unusable reports change nothing and say why."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from tests.bounce_samples import gmail_dsn, plain_email, postfix_dsn, yahoo_arf
from tests.conftest import TEST_SECRET, TenantKeys
from tests.integration.sent_mail import (
    SentMail,
    events_of,
    footprint,
    seed_sent_mail,
    status_of,
    suppressions_of,
)
from tidings.bounces import mailbox
from tidings.bounces.identify import verp_address
from tidings.bounces.mailbox import process_maildir, process_report, start_smtp_receiver
from tidings.bounces.reports import MalformedReport, ParsedReport, parse_report
from tidings.cli.bounces import FOLLOW_INTERVAL
from tidings.errors import NotFound
from tidings.runtime import Runtime
from tidings.services.inbound import InboundOutcome


def test_a_postfix_hard_bounce_suppresses_the_address_and_fails_the_message(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    processed = process_report(
        runtime, postfix_dsn(recipient=mail.email, message_id=mail.message_id_header)
    )
    assert processed.result.outcome is InboundOutcome.recorded
    assert processed.result.message_id == mail.id
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "hard_bounce")]
    contact, message, error = status_of(runtime, mail)
    assert (contact, message) == ("bounced", "failed")
    assert error is not None and "5.1.1" in error and "User unknown" in error
    ((kind, campaign_id, detail),) = events_of(runtime, mail.id)
    assert (kind, campaign_id) == ("bounced", mail.campaign_id)
    assert detail is not None and "reported by mx.example.org" in detail


def test_a_gmail_bounce_is_matched_by_the_returned_headers(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "bob@gmail.com", campaign=False)
    processed = process_report(
        runtime, gmail_dsn(recipient=mail.email, message_id=mail.message_id_header)
    )
    assert processed.result.message_id == mail.id
    assert suppressions_of(runtime, acme.tenant_id) == [("bob@gmail.com", "hard_bounce")]
    assert [e[:2] for e in events_of(runtime, mail.id)] == [("bounced", None)]


def test_a_message_whose_outcome_was_never_written_is_found_by_its_signed_message_id(
    runtime: Runtime, acme: TenantKeys
) -> None:
    """The worker died after the send: the row has no Message-ID yet, the header's HMAC says which."""
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", store_header=False)
    processed = process_report(
        runtime, postfix_dsn(recipient=mail.email, message_id=mail.message_id_header)
    )
    assert processed.result.message_id == mail.id


def test_a_report_without_headers_is_matched_by_its_verp_return_path(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    return_path = verp_address(TEST_SECRET, "bounces@tidings.test", mail.id)
    raw = postfix_dsn(recipient=mail.email, message_id=None, to=return_path)
    assert process_report(runtime, raw).result.message_id == mail.id


def test_a_soft_bounce_is_noted_and_nothing_is_suppressed(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    raw = postfix_dsn(
        recipient=mail.email,
        message_id=mail.message_id_header,
        action="delayed",
        status="4.2.2",
        diagnostic="smtp; 452 4.2.2 Mailbox full",
    )
    assert process_report(runtime, raw).result.outcome is InboundOutcome.recorded
    assert suppressions_of(runtime, acme.tenant_id) == []
    assert status_of(runtime, mail)[:2] == ("active", "sent")
    ((kind, _, detail),) = events_of(runtime, mail.id)
    assert kind == "deferred" and detail is not None and "Mailbox full" in detail


def test_a_yahoo_complaint_suppresses_the_address_and_marks_the_contact(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "carol@yahoo.com")
    processed = process_report(
        runtime, yahoo_arf(recipient=mail.email, message_id=mail.message_id_header)
    )
    assert processed.result.outcome is InboundOutcome.recorded
    assert suppressions_of(runtime, acme.tenant_id) == [("carol@yahoo.com", "complaint")]
    assert status_of(runtime, mail)[:2] == ("complained", "sent")
    assert [e[:2] for e in events_of(runtime, mail.id)] == [("complained", mail.campaign_id)]


def test_a_report_only_touches_the_tenant_that_sent_the_message(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    ours = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    theirs = seed_sent_mail(runtime, globex.tenant_id, "ada@example.com")
    process_report(runtime, yahoo_arf(recipient=ours.email, message_id=ours.message_id_header))
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "complaint")]
    assert suppressions_of(runtime, globex.tenant_id) == []
    assert status_of(runtime, theirs)[0] == "active"


def test_the_same_report_twice_is_recorded_once(runtime: Runtime, acme: TenantKeys) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    raw = postfix_dsn(recipient=mail.email, message_id=mail.message_id_header)
    assert process_report(runtime, raw).result.outcome is InboundOutcome.recorded
    assert process_report(runtime, raw).result.outcome is InboundOutcome.duplicate
    assert len(events_of(runtime, mail.id)) == 1


@pytest.mark.parametrize(
    "report",
    ["not-a-report", "garbage", "no-status", "no-feedback-type"],
)
def test_a_malformed_report_raises_with_the_reason_and_changes_nothing(
    runtime: Runtime, acme: TenantKeys, report: str
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    raw = {
        "not-a-report": plain_email(),
        "garbage": b"\x89PNG\r\n\x1a\n",
        "no-status": postfix_dsn(recipient=mail.email, message_id=mail.message_id_header).replace(
            b"Status: 5.1.1", b""
        ),
        "no-feedback-type": yahoo_arf(
            recipient=mail.email, message_id=mail.message_id_header
        ).replace(b"Feedback-Type: abuse\r\n", b""),
    }[report]
    before = footprint(runtime)
    with pytest.raises(MalformedReport) as refused:
        process_report(runtime, raw)
    assert refused.value.message
    assert footprint(runtime) == before


def test_a_report_about_a_message_we_did_not_send_changes_nothing(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    before = footprint(runtime)
    forged = mail.message_id_header.replace(f"<{mail.id}.", f"<{mail.id + 1}.")
    for message_id in (forged, "<CAF+x=abc@mail.gmail.com>", None):
        with pytest.raises(NotFound, match="no message of ours matches"):
            process_report(runtime, postfix_dsn(recipient=mail.email, message_id=message_id))
    assert footprint(runtime) == before


# -- SMTP -----------------------------------------------------------------------------------------


@pytest.fixture
def smtp_receiver(runtime: Runtime) -> Iterator[int]:
    """The SMTP receiver on its own event loop in a thread; yields its port."""
    ready = threading.Event()
    state: dict[str, object] = {}

    def main() -> None:
        async def run() -> None:
            server = await start_smtp_receiver(runtime, "127.0.0.1", 0)
            stop = asyncio.Event()
            state.update(
                port=server.sockets[0].getsockname()[1], stop=stop, loop=asyncio.get_running_loop()
            )
            ready.set()
            await stop.wait()
            server.close()
            await server.wait_closed()

        asyncio.run(run())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield int(state["port"])  # type: ignore[call-overload]
    loop = state["loop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
    thread.join(10)


def _send(port: int, raw: bytes, rcpt: str = "bounces@tidings.test") -> tuple[int, str]:
    raw = re.sub(rb"\r?\n", b"\r\n", raw)  # SMTP lines end in CRLF; smtplib leaves bytes alone
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("<>")
        client.rcpt(rcpt)
        code, reply = client.data(raw)
        return code, reply.decode()


def test_the_smtp_receiver_records_a_report_and_says_so(
    runtime: Runtime, acme: TenantKeys, smtp_receiver: int
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    code, reply = _send(
        smtp_receiver, postfix_dsn(recipient=mail.email, message_id=mail.message_id_header)
    )
    assert code == 250, reply
    assert f"hard bounce recorded for message {mail.id}" in reply
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "hard_bounce")]


def test_the_smtp_receiver_matches_a_verp_recipient(
    runtime: Runtime, acme: TenantKeys, smtp_receiver: int
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    rcpt = verp_address(TEST_SECRET, "bounces@tidings.test", mail.id)
    code, reply = _send(smtp_receiver, yahoo_arf(recipient=mail.email, message_id=None), rcpt=rcpt)
    assert code == 250, reply
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "complaint")]


def test_the_smtp_receiver_refuses_unusable_reports_with_550_and_the_reason(
    runtime: Runtime, acme: TenantKeys, smtp_receiver: int
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    before = footprint(runtime)
    code, reply = _send(smtp_receiver, plain_email())
    assert code == 550 and "multipart/report" in reply
    code, reply = _send(smtp_receiver, postfix_dsn(recipient=mail.email, message_id="<x@y.z>"))
    assert code == 550 and "no message of ours matches" in reply
    assert footprint(runtime) == before


def test_the_smtp_receiver_answers_reports_with_a_broken_message_id_for_good(
    runtime: Runtime, acme: TenantKeys, smtp_receiver: int
) -> None:
    """Not 451 (the MTA would offer the report again for days): recorded, or 550 with why."""
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    reports = _broken_message_id_reports(mail)
    code, reply = _send(smtp_receiver, reports["2.own-id-cut"])
    assert code == 250 and f"hard bounce recorded for message {mail.id}" in reply
    code, reply = _send(smtp_receiver, reports["3.returned-id-cut"])
    assert code == 550 and "no message of ours matches this report (<r1@)" in reply


# -- maildir --------------------------------------------------------------------------------------


def _maildir(path: Path, reports: dict[str, bytes]) -> Path:
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for name, raw in reports.items():
        (path / "new" / name).write_bytes(raw)
    return path


def test_a_maildir_is_processed_and_each_report_moved_by_its_fate(
    runtime: Runtime, acme: TenantKeys, tmp_path: Path
) -> None:
    bounced = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    complained = seed_sent_mail(runtime, acme.tenant_id, "carol@yahoo.com")
    maildir = _maildir(
        tmp_path / "Maildir",
        {
            "1.dsn": postfix_dsn(recipient=bounced.email, message_id=bounced.message_id_header),
            "2.arf": yahoo_arf(recipient=complained.email, message_id=complained.message_id_header),
            "3.ooo": plain_email(),
        },
    )
    summary = process_maildir(runtime, maildir)
    assert (summary.recorded, summary.duplicate, summary.ignored) == (2, 0, 0)
    assert [name for name, _ in summary.failed] == ["3.ooo"]
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == ["1.dsn:2,S", "2.arf:2,S"]
    assert [p.name for p in (maildir / ".Failed" / "new").iterdir()] == ["3.ooo"]
    assert list((maildir / "new").iterdir()) == []
    assert sorted(suppressions_of(runtime, acme.tenant_id)) == [
        ("ada@example.com", "hard_bounce"),
        ("carol@yahoo.com", "complaint"),
    ]
    assert process_maildir(runtime, maildir).recorded == 0  # nothing left to read


def _broken_message_id_reports(mail: SentMail) -> dict[str, bytes]:
    """Reports with ``Message-ID: <r1@``, which crashed the standard library's header parser:
    one whose own id is broken (it still names our message), one that returns a broken id."""
    report = postfix_dsn(
        recipient=mail.email, message_id=mail.message_id_header, report_id="<rep@x.example>"
    )
    returned = postfix_dsn(recipient=mail.email, message_id="<placeholder@x.example>")
    return {
        "2.own-id-cut": report.replace(b"<rep@x.example>", b"<r1@"),
        "3.returned-id-cut": returned.replace(b"<placeholder@x.example>", b"<r1@"),
    }


def test_a_maildir_with_malformed_reports_sets_them_aside_and_records_the_rest(
    runtime: Runtime, acme: TenantKeys, tmp_path: Path
) -> None:
    bounced = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    cut = seed_sent_mail(runtime, acme.tenant_id, "bob@example.com")
    complained = seed_sent_mail(runtime, acme.tenant_id, "carol@yahoo.com")
    nested = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(990)
    )
    maildir = _maildir(
        tmp_path / "Maildir",
        {
            "1.dsn": postfix_dsn(recipient=bounced.email, message_id=bounced.message_id_header),
            **_broken_message_id_reports(cut),
            "4.nested": b"Content-Type: multipart/report; report-type=delivery-status;"
            b' boundary="b0"\r\n\r\n' + nested,
            "5.arf": yahoo_arf(recipient=complained.email, message_id=complained.message_id_header),
        },
    )
    summary = process_maildir(runtime, maildir)
    assert (summary.recorded, summary.duplicate, summary.ignored, summary.left) == (3, 0, 0, 0)
    reasons = dict(summary.failed)
    assert sorted(reasons) == ["3.returned-id-cut", "4.nested"]
    assert "no message of ours matches this report (<r1@)" in reasons["3.returned-id-cut"]
    assert "nested too deeply" in reasons["4.nested"]
    assert list((maildir / "new").iterdir()) == []
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == [
        "1.dsn:2,S",
        "2.own-id-cut:2,S",
        "5.arf:2,S",
    ]
    assert sorted(p.name for p in (maildir / ".Failed" / "new").iterdir()) == sorted(reasons)
    assert sorted(suppressions_of(runtime, acme.tenant_id)) == [
        ("ada@example.com", "hard_bounce"),
        ("bob@example.com", "hard_bounce"),
        ("carol@yahoo.com", "complaint"),
    ]


def test_a_report_that_breaks_the_code_is_set_aside_instead_of_retried_forever(
    runtime: Runtime, acme: TenantKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong with one report happens again on every pass: it is set aside."""
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    good = postfix_dsn(recipient=mail.email, message_id=mail.message_id_header)
    maildir = _maildir(tmp_path / "Maildir", {"1.bug": b"trips the parser", "2.dsn": good})

    def parse(raw: bytes) -> ParsedReport:
        if raw == b"trips the parser":
            raise IndexError("string index out of range")
        return parse_report(raw)

    monkeypatch.setattr(mailbox, "parse_report", parse)
    summary = process_maildir(runtime, maildir)
    assert summary.recorded == 1 and summary.left == 0
    ((name, reason),) = summary.failed
    assert name == "1.bug" and "IndexError('string index out of range')" in reason
    assert [p.name for p in (maildir / ".Failed" / "new").iterdir()] == ["1.bug"]
    assert list((maildir / "new").iterdir()) == []


def test_reports_stay_in_the_maildir_while_the_database_is_unavailable(
    runtime: Runtime, acme: TenantKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reports may be fine: they wait for the next pass, and the pass stops at the first."""
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    raw = postfix_dsn(recipient=mail.email, message_id=mail.message_id_header)
    maildir = _maildir(tmp_path / "Maildir", {"1.dsn": raw, "2.dsn": raw, "3.dsn": raw})
    calls: list[int] = []

    def unavailable(**_: object) -> None:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(mailbox, "record_mailbox_report", unavailable)
    summary = process_maildir(runtime, maildir)
    assert (summary.left, summary.failed, len(calls)) == (3, [], 1)
    assert sorted(p.name for p in (maildir / "new").iterdir()) == ["1.dsn", "2.dsn", "3.dsn"]
    monkeypatch.undo()
    assert process_maildir(runtime, maildir).recorded == 1  # then a duplicate twice


def _environment(runtime: Runtime) -> dict[str, str]:
    settings = runtime.settings
    return {
        **os.environ,
        "TIDINGS_DATABASE_URL": settings.resolved_database_url(),
        "TIDINGS_SECRET_KEY": TEST_SECRET,
        "TIDINGS_DATA_DIR": str(settings.data_dir),
        "TIDINGS_FROM": settings.from_address,
    }


def test_the_bounces_command_reads_a_maildir(
    runtime: Runtime, acme: TenantKeys, tmp_path: Path
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    maildir = _maildir(
        tmp_path / "Maildir",
        {
            "a": gmail_dsn(recipient=mail.email, message_id=mail.message_id_header),
            "b": b"Subject: hello\r\n\r\nnot a report\r\n",
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "bounces", "--maildir", str(maildir)],
        env=_environment(runtime),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "1 recorded" in done.stdout and "1 refused" in done.stdout
    assert "b: a bounce or complaint report is multipart/report" in " ".join(done.stderr.split())
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "hard_bounce")]


def test_the_bounces_command_following_a_maildir_refuses_a_malformed_report_once(
    runtime: Runtime, acme: TenantKeys, tmp_path: Path
) -> None:
    """--follow looks into the maildir every few seconds: a malformed report is refused on the
    first pass and set aside, not retried on every one, and SIGTERM ends the command."""
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    maildir = _maildir(
        tmp_path / "Maildir",
        {
            "1.dsn": postfix_dsn(recipient=mail.email, message_id=mail.message_id_header),
            "3.returned-id-cut": _broken_message_id_reports(mail)["3.returned-id-cut"],
        },
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tidings", "bounces", "--maildir", str(maildir), "--follow"],
        env=_environment(runtime),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while any((maildir / "new").iterdir()):
            assert process.poll() is None, "the command stopped"
            assert time.monotonic() < deadline, "reports are still in new/"
            time.sleep(0.2)
        time.sleep(3 * FOLLOW_INTERVAL)  # a few more passes over the maildir
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        stderr = process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    assert " ".join(stderr.split()).count("refused 3.returned-id-cut: no message of ours") == 1
    assert "Traceback" not in stderr
    assert [p.name for p in (maildir / ".Failed" / "new").iterdir()] == ["3.returned-id-cut"]
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "hard_bounce")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_bounces_command_receives_reports_by_smtp_until_sigterm(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tidings", "bounces", "--port", str(port)],
        env=_environment(runtime),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                code, reply = _send(
                    port, yahoo_arf(recipient=mail.email, message_id=mail.message_id_header)
                )
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.1)
        assert code == 250, reply
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "complaint")]
