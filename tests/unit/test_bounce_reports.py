"""Reading DSN (RFC 3464) and ARF (RFC 5965) reports, and refusing ones that do not follow them."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.bounce_samples import gmail_dsn, plain_email, postfix_dsn, yahoo_arf
from tidings.bounces.identify import (
    message_id_from_header,
    message_id_from_verp,
    verp_address,
)
from tidings.bounces.reports import FeedbackKind, MalformedReport, parse_report
from tidings.config import Settings
from tidings.delivery.compose import Composer

SECRET = "unit-secret-" + "y" * 40
OURS = "<42.0123456789abcdef0123@tidings.test>"


def test_a_postfix_hard_bounce_names_the_recipient_status_and_original_message() -> None:
    report = parse_report(postfix_dsn(recipient="ada@example.com", message_id=OURS))
    assert report.report_type == "delivery-status"
    assert report.kind is FeedbackKind.hard_bounce
    assert report.message_ids == (OURS,)
    assert report.recipients == ("ada@example.com",)
    assert report.reporter == "mx.example.org"
    assert report.detail.startswith("failed 5.1.1: smtp; 550 5.1.1 <ada@example.com>")
    assert report.report_id.startswith("<") and report.report_id.endswith("@reports.example>")


def test_a_gmail_bounce_returning_only_headers_is_matched_by_those_headers() -> None:
    report = parse_report(gmail_dsn(recipient="bob@gmail.com", message_id=OURS))
    assert report.kind is FeedbackKind.hard_bounce
    assert report.message_ids == (OURS,)
    assert "does not exist" in report.detail
    assert "googlemail.com" in report.detail


@pytest.mark.parametrize(
    ("action", "status", "kind"),
    [
        ("failed", "5.2.1", FeedbackKind.hard_bounce),
        ("failed", "4.4.7", FeedbackKind.soft_bounce),  # gave up after retrying: not permanent
        ("delayed", "4.2.2", FeedbackKind.soft_bounce),
        ("delivered", "2.0.0", None),  # a success notice: nothing to record
        ("relayed", "2.0.0", None),
    ],
)
def test_the_action_and_status_class_decide_hard_soft_or_nothing(
    action: str, status: str, kind: FeedbackKind | None
) -> None:
    raw = postfix_dsn(recipient="ada@example.com", message_id=OURS, action=action, status=status)
    assert parse_report(raw).kind is kind


def test_a_yahoo_abuse_report_is_a_complaint_about_the_original_message() -> None:
    report = parse_report(yahoo_arf(recipient="carol@yahoo.com", message_id=OURS))
    assert report.report_type == "feedback-report"
    assert report.kind is FeedbackKind.complaint
    assert report.message_ids == (OURS,)
    assert report.recipients == ("carol@yahoo.com",)
    assert report.detail == "abuse report from Yahoo!-Mail-Feedback/2.0"


def test_a_not_spam_feedback_report_records_nothing() -> None:
    raw = yahoo_arf(recipient="carol@yahoo.com", message_id=OURS, feedback_type="not-spam")
    assert parse_report(raw).kind is None


def _report_without(part_type: str, raw: bytes) -> bytes:
    """The report with every part of ``part_type`` removed."""
    from email import message_from_bytes, policy

    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    message.set_payload([p for p in message.iter_parts() if p.get_content_type() != part_type])
    return message.as_bytes()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\x00\xff garbage \xfe", "multipart/report"),
        (plain_email(), "this one is text/plain"),
        (
            postfix_dsn(recipient="a@example.com", message_id=OURS).replace(
                b'report-type="delivery-status"', b'report-type="disposition-notification"'
            ),
            "report-type must be",
        ),
        (
            _report_without(
                "message/delivery-status", postfix_dsn(recipient="a@example.com", message_id=OURS)
            ),
            "no message/delivery-status part",
        ),
        (
            postfix_dsn(recipient="a@example.com", message_id=OURS).replace(
                b"Status: 5.1.1", b"Status: bounced"
            ),
            "has no valid Status",
        ),
        (
            postfix_dsn(recipient="a@example.com", message_id=OURS).replace(
                b"Action: failed", b"X-Action: failed"
            ),
            "has no Action",
        ),
        (
            _report_without(
                "message/feedback-report", yahoo_arf(recipient="a@example.com", message_id=OURS)
            ),
            "no message/feedback-report part",
        ),
        (
            yahoo_arf(recipient="a@example.com", message_id=OURS).replace(
                b"Feedback-Type: abuse", b"Feedback-Kind: abuse"
            ),
            "no Feedback-Type",
        ),
    ],
    ids=[
        "empty",
        "binary",
        "not-a-report",
        "other-report-type",
        "dsn-without-status-part",
        "bad-status",
        "no-action",
        "arf-without-feedback-part",
        "no-feedback-type",
    ],
)
def test_a_malformed_report_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedReport) as refused:
        parse_report(raw)
    assert reason in refused.value.message


def test_a_report_without_its_own_message_id_is_known_by_a_digest_of_its_bytes() -> None:
    raw = postfix_dsn(recipient="a@example.com", message_id=OURS).replace(
        b"Message-ID: <1", b"X-Id: <1", 1
    )
    report = parse_report(raw)
    assert (
        report.report_id.startswith("sha256:") and parse_report(raw).report_id == report.report_id
    )


def test_our_message_ids_are_recognised_and_forged_ones_are_not(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, secret_key=SECRET, from_address="T <noreply@tidings.test>"
    )
    composer = Composer(settings=settings, secret_key=SECRET)
    header = composer.message_id_header(1234)
    assert message_id_from_header(SECRET, header) == 1234
    assert message_id_from_header(SECRET, f" {header} ") == 1234
    assert message_id_from_header(SECRET, header.replace("1234.", "1235.")) is None
    assert message_id_from_header("another-secret-" + "z" * 40, header) is None
    assert message_id_from_header(SECRET, "<CAF=abc@mail.gmail.com>") is None


def test_a_verp_return_path_names_its_message_and_cannot_be_made_up() -> None:
    address = verp_address(SECRET, "bounces@tidings.test", 77)
    assert address.startswith("bounces+m77.") and address.endswith("@tidings.test")
    assert message_id_from_verp(SECRET, address) == 77
    assert message_id_from_verp(SECRET, f"<{address}>") == 77
    assert message_id_from_verp(SECRET, address.replace("+m77.", "+m78.")) is None
    assert message_id_from_verp(SECRET, "bounces@tidings.test") is None
