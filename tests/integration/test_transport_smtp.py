"""SMTP transport against a real server (aiosmtpd, tests/smtp_server.py): pooled connections,
every kind of server refusal mapped to the right outcome, TLS, AUTH, and broken connections."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.smtp_server import (
    NO_SUCH_USER,
    THROTTLED,
    TRY_LATER,
    SmtpTestServer,
    Stage,
    drop,
    make_self_signed_cert,
    reply,
    server_tls_context,
    slow,
)
from tidings.domain.message import OutgoingMessage, Permanent, Sent, Transient
from tidings.transports import smtp as smtp_module
from tidings.transports.base import ABANDONED
from tidings.transports.factory import open_transport
from tidings.transports.smtp import ENVELOPE_LEAD, SmtpTransport


def message(i: int, to: str | None = None, **changes: object) -> OutgoingMessage:
    msg = OutgoingMessage(
        message_id=i,
        tenant_id=1,
        from_address="Acme <news@acme.test>",
        to_address=to or f"user{i}@example.com",
        to_name=f"User {i}",
        subject=f"Hello {i} ✓",
        text=f"Hi user {i}\n.\n.a line starting with a dot\n",
        html=f"<p>Hi user {i}</p>",
        message_id_header=f"<{i}.test@acme.test>",
        headers=(("List-Unsubscribe", f"<https://acme.test/u/{i}>"),),
    )
    return replace(msg, **changes)  # type: ignore[arg-type]


@pytest.fixture(params=[True, False], ids=["pipelining", "lockstep"])
def server(request: pytest.FixtureRequest) -> Iterator[SmtpTestServer]:
    """Every test runs against a server that offers PIPELINING and one that does not."""
    with SmtpTestServer(pipelining=request.param) as srv:
        yield srv


def smtp(server: SmtpTestServer, *, concurrency: int = 10, query: str = "") -> SmtpTransport:
    transport = open_transport(server.url + query, concurrency=concurrency)
    assert isinstance(transport, SmtpTransport)
    return transport


async def test_a_batch_is_delivered_over_a_few_reused_connections(server: SmtpTestServer) -> None:
    transport = smtp(server, concurrency=3)
    try:
        first = await transport.send([message(i) for i in range(30)])
        second = await transport.send([message(i) for i in range(30, 40)])
    finally:
        await transport.close()

    assert all(isinstance(o, Sent) for o in first + second)
    received = server.wait_for(40)
    assert server.connections <= 3  # ten messages a connection, not one connection a message
    assert len({m.connection for m in received}) == server.connections
    # The provider id is the queue id from the server's "250 ... queued as T00001" reply.
    ids = {o.provider_id for o in first + second if isinstance(o, Sent)}
    assert len(ids) == 40 and all(i and i.startswith("T") for i in ids)

    got = {m.message["Message-ID"]: m for m in received}
    one = got["<7.test@acme.test>"]
    assert one.mail_from == "news@acme.test" and one.rcpt_tos == ("user7@example.com",)
    assert one.message["Subject"] == "Hello 7 ✓"
    plain = one.message.get_body(("plain",))
    assert plain is not None
    assert plain.get_content().replace("\r\n", "\n") == (
        "Hi user 7\n.\n.a line starting with a dot\n"  # dot-stuffing undone exactly
    )
    assert any(o.startswith("SIZE=") for o in one.mail_options)


async def test_outcomes_keep_the_order_of_the_batch(server: SmtpTestServer) -> None:
    server.fail("bad@example.com", reply(NO_SUCH_USER))
    transport = smtp(server, concurrency=4)
    try:
        batch = [
            message(1),
            message(2, "bad@example.com"),
            message(3),
            message(4, "bad@example.com"),
        ]
        outcomes = await transport.send(batch)
    finally:
        await transport.close()
    assert [type(o) for o in outcomes] == [Sent, Permanent, Sent, Permanent]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            reply(NO_SUCH_USER),
            Permanent("550 5.1.1 no such user (at RCPT)", hard_bounce=True, bounce=True),
        ),
        (reply(TRY_LATER), Transient("451 4.3.0 try later (at RCPT)", bounce=True)),
        (
            reply(THROTTLED, at="DATA"),
            Transient("421 4.7.0 throttled, slow down (at DATA)", throttled=True),
        ),
        (
            reply("450 4.7.1 greylisted, come back later"),
            Transient("450 4.7.1 greylisted, come back later (at RCPT)", throttled=True),
        ),
        (
            reply("452 too many connections from your IP"),
            Transient("452 too many connections from your IP (at RCPT)", throttled=True),
        ),
        (
            reply("554 5.7.1 message rejected as spam", at="END"),
            Permanent("554 5.7.1 message rejected as spam (at DATA)", bounce=True),
        ),
        (
            reply("550 5.1.1 unknown user", at="END"),
            Permanent("550 5.1.1 unknown user (at DATA)", hard_bounce=True, bounce=True),
        ),
        (
            reply("552 5.3.4 message too big", at="END"),
            Permanent("552 5.3.4 message too big (at DATA)", bounce=True),
        ),
        (
            reply("451 4.3.0 queue full", at="END"),
            Transient("451 4.3.0 queue full (at DATA)", bounce=True),
        ),
    ],
    ids=lambda v: v.reply if hasattr(v, "reply") else "",
)
async def test_each_server_refusal_becomes_the_right_outcome(
    server: SmtpTestServer, fault: object, expected: object
) -> None:
    server.fail("rcpt@example.com", fault)  # type: ignore[arg-type]
    transport = smtp(server, concurrency=1)
    try:
        refused, after = await transport.send([message(1, "rcpt@example.com")]), None
        after = await transport.send([message(2)])
    finally:
        await transport.close()
    assert refused == [expected]
    # The connection was reset (RSET) or replaced, and the next message goes through.
    assert after is not None and isinstance(after[0], Sent)
    assert [m.rcpt_tos for m in server.messages] == [("user2@example.com",)]


async def test_a_refused_sender_is_permanent_but_no_hard_bounce_of_the_recipient(
    server: SmtpTestServer,
) -> None:
    server.fail(None, reply("553 5.1.8 sender domain does not exist", at="MAIL"))
    transport = smtp(server)
    try:
        (outcome,) = await transport.send([message(1)])
    finally:
        await transport.close()
    assert outcome == Permanent("553 5.1.8 sender domain does not exist (at MAIL)")


async def test_faults_for_the_first_attempts_then_success(server: SmtpTestServer) -> None:
    server.fail("amy@example.com", reply(TRY_LATER), times=2)
    transport = smtp(server)
    try:
        outcomes = [(await transport.send([message(1, "amy@example.com")]))[0] for _ in range(3)]
    finally:
        await transport.close()
    assert [type(o) for o in outcomes] == [Transient, Transient, Sent]
    assert server.attempts("amy@example.com") == 3
    assert len(server.to("amy@example.com")) == 1


async def test_connection_dropped_before_data_is_transient_and_nothing_is_delivered(
    server: SmtpTestServer,
) -> None:
    server.fail("drop@example.com", drop(at="DATA"))
    transport = smtp(server)
    try:
        (outcome,) = await transport.send([message(1, "drop@example.com")])
        (after,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert isinstance(outcome, Transient) and not outcome.throttled
    assert "may have accepted" not in outcome.reason
    assert server.to("drop@example.com") == []
    assert isinstance(after, Sent)  # a new connection replaced the dropped one
    assert server.connections == 2


async def test_connection_dropped_after_the_final_dot_is_the_duplicate_window(
    server: SmtpTestServer,
) -> None:
    """RFC 1047: the server got the message but we never heard. We must say Transient (the worker
    retries with the same Message-ID) and never retry on our own behind its back."""
    server.fail("dup@example.com", drop(at="END"), times=1)
    transport = smtp(server)
    try:
        (lost,) = await transport.send([message(9, "dup@example.com")])
        assert isinstance(lost, Transient) and "may have accepted" in lost.reason
        assert len(server.to("dup@example.com")) == 1  # exactly one copy, no silent retry
        (retried,) = await transport.send([message(9, "dup@example.com")])
    finally:
        await transport.close()
    assert isinstance(retried, Sent)
    copies = server.to("dup@example.com")
    assert [c.replied for c in copies] == [False, True]
    assert (
        copies[0].message["Message-ID"] == copies[1].message["Message-ID"] == "<9.test@acme.test>"
    )


async def test_reply_to_the_final_dot_is_waited_for_longer_than_a_command(
    server: SmtpTestServer,
) -> None:
    transport = smtp(server, concurrency=1, query="&timeout=0.3&data_timeout=5")
    try:
        await transport.send([message(1)])  # connected before the clock matters
        server.fail(None, slow(0.6, at="END"))
        (outcome,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert isinstance(outcome, Sent)


async def test_a_slow_command_reply_times_out_as_transient(server: SmtpTestServer) -> None:
    transport = smtp(server, concurrency=1, query="&timeout=0.3")
    try:
        await transport.send([message(1)])  # connected before the clock matters
        server.fail(None, slow(0.9, at="RCPT"), times=1)
        started = time.monotonic()
        (outcome,) = await transport.send([message(2)])
        elapsed = time.monotonic() - started
        (after,) = await transport.send([message(3)])
    finally:
        await transport.close()
    assert isinstance(outcome, Transient) and "timed out at RCPT" in outcome.reason
    assert elapsed < 0.85  # gave up at the command timeout, not when the server answered
    assert isinstance(after, Sent)


async def test_an_idle_connection_closed_by_the_server_is_replaced(server: SmtpTestServer) -> None:
    transport = smtp(server, concurrency=1)
    try:
        assert isinstance((await transport.send([message(1)]))[0], Sent)
        assert server.disconnect_all() == 1  # the server's idle timeout, say
        (outcome,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert isinstance(outcome, Sent)
    assert server.connections == 2


async def test_a_long_idle_connection_is_checked_with_noop_before_reuse(
    server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = smtp(server, concurrency=1)
    try:
        await transport.send([message(1)])
        probes = server.noops  # the first connection times one NOOP (the lead's first guess)
        monkeypatch.setattr(smtp_module, "IDLE_CHECK_SECONDS", 0.0)
        (outcome,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert isinstance(outcome, Sent)
    assert server.noops == probes + 1 and server.connections == 1


async def test_prepare_opens_and_checks_connections_before_sends_that_have_a_slot(
    server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Throttled mail must start at its slot, not connect then: ``prepare`` does it ahead."""
    transport = smtp(server, concurrency=4)
    try:
        await transport.prepare(3)
        assert server.connections == 3 and transport.stats.connections_opened == 3
        probes = server.noops  # timed on the first connections (the lead's first guess)
        outcomes = await transport.send([message(i) for i in range(3)])
        assert transport.stats.connections_opened == 3  # the sends found them open
        monkeypatch.setattr(smtp_module, "IDLE_CHECK_SECONDS", 0.0)
        await transport.prepare(1)  # an idle connection is checked now, not at the send
        assert server.noops == probes + 1
        monkeypatch.setattr(smtp_module, "IDLE_CHECK_SECONDS", 60.0)
        await transport.send([message(3)])
        assert server.noops == probes + 1
        await transport.prepare(9)  # never more than the transport's concurrency
        assert server.connections == 4
    finally:
        await transport.close()
    assert all(isinstance(o, Sent) for o in outcomes)


async def test_send_at_connects_first_and_starts_at_the_moment_asked_never_before(
    server: SmtpTestServer,
) -> None:
    transport = smtp(server, concurrency=4)
    try:
        at = time.monotonic() + 0.2
        outcomes = await transport.send_at([message(1), message(2)], at=at, by=at + 0.05)
    finally:
        await transport.close()
    assert all(isinstance(o, Sent) for o in outcomes)
    # Connecting (and EHLO) happened before, the envelope just before: the messages themselves
    # arrive right after the moment, never before it.
    received = [m.received_monotonic for m in server.messages]
    assert len(received) == 2 and all(at <= t < at + 0.03 for t in received), received
    envelopes = [server.attempt_times(f"user{i}@example.com")[0] for i in (1, 2)]
    assert all(at - ENVELOPE_LEAD <= t < at + 0.03 for t in envelopes), [t - at for t in envelopes]
    assert server.connections == 2


async def test_send_at_leaves_unsent_what_cannot_start_by_its_deadline(
    server: SmtpTestServer,
) -> None:
    transport = smtp(server, concurrency=2)
    try:
        past = time.monotonic() - 1.0
        outcomes = await transport.send_at([message(1)], at=past, by=past + 0.5)
        (later,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert outcomes == [None]
    assert server.attempts("user1@example.com") == 0
    assert isinstance(later, Sent) and server.connections == 1  # the connection went back


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
async def test_send_at_abandons_a_message_whose_conversation_runs_past_its_deadline(
    server: SmtpTestServer, stage: Stage
) -> None:
    """A slot bounds when the server sees every part of the message, not only its start: a reply
    that comes too late means no further command (RSET) or, once in DATA, no message (hang up)."""
    server.fail(None, slow(0.2, at=stage))
    transport = smtp(server, concurrency=2)
    try:
        at = time.monotonic() + 0.05
        outcomes = await transport.send_at([message(1)], at=at, by=at + 0.05)
        server.clear_faults()
        (later,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert outcomes == [ABANDONED]  # not None: the server saw its envelope, its slot is used
    assert server.to("user1@example.com") == []
    assert isinstance(later, Sent)
    # Before DATA was sent the connection is reset and reused; after 354 it had to be dropped.
    kept = stage in ("MAIL", "RCPT") and not server.pipelining
    assert server.connections == (1 if kept else 2)
    if stage == "MAIL" and not server.pipelining:  # nor was a late RCPT TO sent
        assert server.attempts("user1@example.com") == 0


async def test_send_at_learns_a_distant_servers_round_trip_and_writes_the_envelope_earlier(
    server: SmtpTestServer,
) -> None:
    """A server across the internet answers the envelope in tens of milliseconds: written at
    the slot's own tolerance, every throttled send would be given up. The transport measures the
    round trip and writes the envelope that much ahead, so the message itself still goes at the
    slot."""
    server.fail(None, slow(0.06, at="DATA"))
    transport = smtp(server, concurrency=2)
    try:
        (first,) = await transport.send([message(1)])  # any envelope is measured
        assert transport.lead >= 0.12
        at = time.monotonic() + transport.lead + 0.05
        outcomes = await transport.send_at([message(2)], at=at, by=at + 0.012)
    finally:
        await transport.close()
    assert isinstance(first, Sent) and isinstance(outcomes[0], Sent)
    (received,) = server.to("user2@example.com")
    assert at <= received.received_monotonic < at + 0.03


async def test_one_stalled_envelope_does_not_move_the_lead(server: SmtpTestServer) -> None:
    """The lead becomes every worker's of the tenant, and a rise costs throttled mail its size
    once: a single slow reply (a pause on either side) must not raise it."""
    server.script(None, None, None, slow(0.3, at="DATA"))
    transport = smtp(server, concurrency=1)
    try:
        for number in range(6):
            await transport.send([message(number)])
        assert transport.lead < 0.05
    finally:
        await transport.close()


async def test_a_warm_up_cut_short_while_timing_its_first_trip_leaves_no_connection_open(
    server: SmtpTestServer,
) -> None:
    """A worker's warm-up (``prepare(1)``) has a time limit; a server slow to answer the NOOP
    that times the first round trip must not leave that connection open behind it."""
    server.far_away("far.test", 2.0)
    transport = smtp(server, concurrency=1, query="&helo=far.test")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await transport.prepare(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    await transport.close()


async def test_an_old_connection_is_retired_and_replaced(
    server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = smtp(server, concurrency=1)
    try:
        await transport.send([message(1)])
        monkeypatch.setattr(smtp_module, "MAX_CONNECTION_AGE", 0.0)
        (outcome,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert isinstance(outcome, Sent)
    assert server.connections == 2
    assert [m.connection for m in server.wait_for(2)] == [1, 2]


async def test_a_connection_that_dies_under_a_reused_session_is_retried_once(
    server: SmtpTestServer,
) -> None:
    """The server closed the connection just as we reused it: nothing of the message was sent,
    so one retry on a fresh connection is safe and spares the message a backoff."""
    transport = smtp(server, concurrency=1)
    try:
        assert isinstance((await transport.send([message(1)]))[0], Sent)
        server.fail(None, drop(at="MAIL"), times=1)
        (outcome,) = await transport.send([message(2)])
    finally:
        await transport.close()
    assert isinstance(outcome, Sent)
    assert transport.stats.stale_retries == 1


async def test_an_unserialisable_message_fails_alone(server: SmtpTestServer) -> None:
    transport = smtp(server)
    try:
        outcomes = await transport.send(
            [
                message(1, subject="evil\r\nBcc: victim@example.com"),
                message(2),
                message(3, "a b@x.com"),
            ]
        )
    finally:
        await transport.close()
    assert isinstance(outcomes[0], Permanent) and "line break" in outcomes[0].reason
    assert isinstance(outcomes[1], Sent)
    assert isinstance(outcomes[2], Permanent)
    assert [m.rcpt_tos for m in server.wait_for(1)] == [("user2@example.com",)]


async def test_unicode_domain_is_sent_as_punycode(server: SmtpTestServer) -> None:
    transport = smtp(server)
    try:
        (outcome,) = await transport.send([message(1, "bob@bücher.example")])
    finally:
        await transport.close()
    assert isinstance(outcome, Sent)
    assert server.wait_for(1)[0].rcpt_tos == ("bob@xn--bcher-kva.example",)


async def test_unreachable_server_fails_the_batch_fast_as_transient() -> None:
    with SmtpTestServer() as gone:
        url = gone.url
    transport = open_transport(url, concurrency=5)
    try:
        started = time.monotonic()
        outcomes = await transport.send([message(i) for i in range(20)])
    finally:
        await transport.close()
    assert all(isinstance(o, Transient) and "cannot connect" in o.reason for o in outcomes)
    assert time.monotonic() - started < 2


async def test_starttls_required_but_not_offered_is_transient_with_a_hint() -> None:
    with SmtpTestServer() as srv:
        transport = open_transport(srv.url.replace("tls=none", "tls=starttls"), concurrency=2)
        try:
            (outcome,) = await transport.send([message(1)])
        finally:
            await transport.close()
    # This server offers no STARTTLS: a configuration problem, retried, and explained.
    assert isinstance(outcome, Transient)
    assert "tls=none" in outcome.reason


# --- TLS and AUTH --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


async def test_starttls_with_a_verified_certificate_and_auth(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    context = server_tls_context(cert, key)
    with SmtpTestServer(
        starttls_context=context, require_starttls=True, auth=("mailer", "s3cr%t")
    ) as srv:
        url = f"smtp://mailer:s3cr%25t@127.0.0.1:{srv.port}?tls=starttls&cafile={cert}"
        transport = open_transport(url)
        try:
            outcomes = await transport.send([message(1), message(2)])
        finally:
            await transport.close()
        received = srv.wait_for(2)
    assert all(isinstance(o, Sent) for o in outcomes)
    assert all(m.tls and m.authenticated_as == "mailer" for m in received)


async def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with SmtpTestServer(implicit_tls_context=server_tls_context(cert, key)) as srv:
        transport = open_transport(f"smtps://127.0.0.1:{srv.port}?cafile={cert}")
        try:
            (outcome,) = await transport.send([message(1)])
        finally:
            await transport.close()
        assert srv.wait_for(1)[0].tls
    assert isinstance(outcome, Sent)


async def test_an_untrusted_certificate_is_refused_unless_verification_is_off(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    with SmtpTestServer(starttls_context=server_tls_context(cert, key)) as srv:
        strict = open_transport(f"smtp://127.0.0.1:{srv.port}?tls=starttls")
        lax = open_transport(f"smtp://127.0.0.1:{srv.port}?tls=starttls&verify=false")
        try:
            (refused,) = await strict.send([message(1)])
            (accepted,) = await lax.send([message(2)])
        finally:
            await strict.close()
            await lax.close()
    assert isinstance(refused, Transient) and "CERTIFICATE_VERIFY_FAILED" in refused.reason
    assert isinstance(accepted, Sent)


async def test_a_wrong_password_is_transient_not_the_messages_fault(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    context = server_tls_context(cert, key)
    with SmtpTestServer(starttls_context=context, auth=("mailer", "right")) as srv:
        transport = open_transport(
            f"smtp://mailer:wrong@127.0.0.1:{srv.port}?tls=starttls&cafile={cert}"
        )
        try:
            (outcome,) = await transport.send([message(1)])
        finally:
            await transport.close()
    assert isinstance(outcome, Transient) and "535" in outcome.reason
    assert "wrong" not in outcome.reason
