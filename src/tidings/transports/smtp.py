"""SMTP delivery through a pool of persistent connections.

A connection is opened once (aiosmtplib: TLS or STARTTLS, EHLO, AUTH) and then carries message
after message, pipelined on ``smtp_session.SmtpSession``: a new connection costs several round
trips and a TLS handshake, which is what would keep us far from thousands of messages a second.
``bench/bench_smtp_clients.py`` measured that choice against plain aiosmtplib ``sendmail`` and
stdlib ``smtplib`` in a thread pool. Everything the server says is translated here into
``Sent`` / ``Transient`` / ``Permanent``; nothing above this module sees an aiosmtplib type.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from tidings.domain.message import Outcome, OutgoingMessage, Permanent, Sent, Transient
from tidings.transports.base import (
    ABANDONED,
    DEFAULT_CONCURRENCY,
    Abandoned,
    SmtpSettings,
    wait_until,
)
from tidings.transports.mime import build_message_bytes, envelope_sender, header_address
from tidings.transports.smtp_session import ProtocolViolation, Reply, SmtpSession

#: A connection idle longer than this is checked with NOOP before it carries a message: servers
#: drop idle clients (Postfix after 300 s), and finding out at MAIL FROM costs a retry.
IDLE_CHECK_SECONDS = 30.0
#: A connection is retired after this long, as Postfix's smtp_connection_reuse_time_limit does:
#: it spreads load over a pool of servers behind one name and bounds per-connection state.
MAX_CONNECTION_AGE = 300.0  # seconds
QUIT_TIMEOUT = 5.0  # seconds; closing must not hang a shutdown
#: A send at a slot writes its envelope (MAIL, RCPT, DATA) ahead of the slot, so that only the
#: message itself is left for the slot: no round trip between the slot and the server's receipt.
#: How far ahead follows the server's measured envelope round trip (twice the median of the last
#: ``ROUND_TRIPS``, at least this): a server across the internet answers in tens of milliseconds,
#: and an envelope written at the slot would make every throttled send late. The claim turns the
#: lead asked for into the one every worker of the tenant uses, and spaces envelopes as it spaces
#: slots (``delivery/throttle.py``); a median, because one stalled reply must not raise that lead.
ENVELOPE_LEAD = 0.010  # seconds
MAX_ENVELOPE_LEAD = (
    1.0  # seconds; a server slower than this gets its throttled mail late or not at all
)
ROUND_TRIPS = 31  # envelope round trips the lead is the median of

# "250 2.0.0 Ok: queued as 4Bc9xyz" (Postfix), "250 OK id=1abcde-000123-AB" (Exim).
_QUEUE_ID = re.compile(r"queued as ([!-~]+)|\bid=([!-~]+)", re.IGNORECASE)
_UNSAFE_IN_ENVELOPE = re.compile(r"[\x00-\x20<>\x7f]")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
# Enhanced codes 5.1.7 / 5.1.8 are about the *sender's* address: not the recipient's bounce.
_SENDER_DETAILS = frozenset({"7", "8"})


def classify_reply(code: int, text: str, *, stage: str) -> Outcome:
    """The outcome an SMTP reply means for the message, ``stage`` being MAIL, RCPT or DATA.

    421 and 4.7.x (and "too many ...") ask us to slow down: ``Transient(throttled=True)``. Other
    4xx: ``Transient``, a soft bounce at RCPT or DATA. 5xx: ``Permanent``, a hard bounce at RCPT or
    DATA, which also suppresses the address when the enhanced status is 5.1.x about the recipient
    ("550 5.1.1 no such user").
    """
    text = " ".join(text.split())  # multi-line replies come joined with newlines
    if 200 <= code < 300:
        return Sent(provider_id=parse_queue_id(text))
    reason = f"{code} {text} (at {stage})".strip()
    enhanced = _ENHANCED.match(text)
    if 400 <= code < 500:
        throttled = (
            code == 421
            or (enhanced is not None and enhanced.group(2) == "7")
            or "too many" in text.lower()
        )
        # A refusal at MAIL is about our sender or the server, not this recipient: no bounce.
        return Transient(reason, throttled=throttled, bounce=not throttled and stage != "MAIL")
    if 500 <= code < 600:
        hard = (
            enhanced is not None
            and enhanced.group(2) == "1"
            and stage != "MAIL"
            and enhanced.group(3) not in _SENDER_DETAILS
        )
        return Permanent(reason, hard_bounce=hard, bounce=stage != "MAIL")
    return Transient(f"unexpected reply {reason}")


def parse_queue_id(text: str) -> str | None:
    match = _QUEUE_ID.search(text)
    if match is None:
        return None
    return (match.group(1) or match.group(2)).rstrip(".,;)")


@dataclass(eq=False, slots=True)
class _Connection:
    session: SmtpSession
    opened: float  # time.monotonic()
    last_used: float
    messages: int = 0


@dataclass(slots=True)
class _BatchState:
    """Shared by the messages of one ``send``: after one failed connect, the others needing a new
    connection fail at once instead of each waiting out its own connect timeout."""

    connect_failure: Transient | None = None


@dataclass(frozen=True, slots=True)
class _Result:
    #: None: not sent, its deadline came first and the server saw nothing; ABANDONED: given up
    #: after the envelope went out, before the final dot.
    outcome: Outcome | Abandoned | None
    keep: bool  # the connection is clean and may carry the next message
    #: Failed before the server saw anything of this message on a reused connection: a stale
    #: connection, worth one retry on a fresh one.
    stale: bool = False


@dataclass(slots=True)
class PoolStats:
    """Counters for tests and metrics."""

    connections_opened: int = 0
    messages: int = 0  # transactions started (a stale retry counts twice)
    stale_retries: int = 0


class SmtpTransport:
    """Sends through at most ``concurrency`` connections to one SMTP server, reused across calls."""

    def __init__(self, settings: SmtpSettings, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.settings = settings
        self.stats = PoolStats()
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._idle: list[_Connection] = []  # LIFO: the warmest connection goes first
        self._tls_context: ssl.SSLContext | None = None
        self._local_hostname = settings.helo
        self._closed = False
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIPS)  # envelope's, in seconds
        #: Until an envelope was timed, a NOOP on the first connection stands in for one: the
        #: handshake itself is no measure (it was 200 ms in a worker starting beside seven
        #: others, and every worker of the tenant would have taken that lead).
        self._first_trip: float | None = None

    @property
    def lead(self) -> float:
        """How long before its slot a throttled send would write its envelope."""
        if self._round_trips:
            typical = statistics.median(self._round_trips)
        elif self._first_trip is not None:
            typical = self._first_trip
        else:
            return ENVELOPE_LEAD
        return min(MAX_ENVELOPE_LEAD, max(ENVELOPE_LEAD, 2 * typical + 0.002))

    async def send(self, batch: Sequence[OutgoingMessage]) -> list[Outcome]:
        if self._closed:
            raise RuntimeError("send() on a closed SmtpTransport")
        state = _BatchState()
        outcomes = await asyncio.gather(*(self._send_one(m, state, None) for m in batch))
        # All of them: with no start time there is nothing to miss or abandon.
        return [o for o in outcomes if o is not None and o is not ABANDONED]

    async def send_at(
        self,
        batch: Sequence[OutgoingMessage],
        *,
        at: float,
        by: float,
        lead: float | None = None,
    ) -> list[Outcome | Abandoned | None]:
        """Each message's bytes are built and a connection checked out first. Its envelope is
        written within ``[at, by]`` shifted ``lead`` earlier (the claim's, which spaced the
        envelopes; by default this transport's own), the message itself within
        ``[at, by]``; each write is checked against its deadline in the same step of the event
        loop that makes it. So whatever the server counts a message by (RCPT or the final dot), it
        sees the messages with the spacing of their slots, or not at all: a late message is
        abandoned before its final dot (RSET, or a dropped connection after DATA)."""
        if self._closed:
            raise RuntimeError("send_at() on a closed SmtpTransport")
        state = _BatchState()
        start = (at, by, self.lead if lead is None else lead)
        return list(await asyncio.gather(*(self._send_one(m, state, start) for m in batch)))

    async def prepare(self, count: int) -> None:
        """Have up to ``count`` connections open and recently checked: a new connection costs
        several round trips (and a TLS handshake), an idle one a NOOP, which a send that must
        start at its slot should not spend then. Each is held out of the pool (and counts against
        the concurrency) until all are ready, so that one is not checked ``count`` times."""
        count = min(count, self._concurrency)
        if self._closed or count < 1:
            return
        remaining = count
        all_out = asyncio.Event()

        async def ready_one() -> None:
            nonlocal remaining
            async with self._slots:
                conn: _Connection | Transient | None = None
                try:
                    conn = await self._checkout(_BatchState(), reuse=True)
                finally:
                    remaining -= 1
                    if not remaining:
                        all_out.set()
                await all_out.wait()
                if isinstance(conn, _Connection):
                    self._checkin(conn, keep=True)  # checked (NOOP) or new: fresh for a while

        await asyncio.gather(*(ready_one() for _ in range(count)))

    async def close(self) -> None:
        """QUIT every idle connection (politely, briefly); later sends are refused."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(conn) for conn in idle))

    async def _send_one(
        self,
        message: OutgoingMessage,
        state: _BatchState,
        start: tuple[float, float, float] | None,
    ) -> Outcome | Abandoned | None:
        """Send one message; with ``start`` = (at, by, lead), from ``at`` on, or not at all when
        a write of its conversation would come too late (see ``send_at``)."""
        try:
            raw = build_message_bytes(message)
            sender = _envelope_address(message.return_path or envelope_sender(message.from_address))
            recipient = _envelope_address(message.to_address)
        except ValueError as exc:
            return Permanent(f"message cannot be serialised: {exc}")
        # Dot-stuffing (RFC 5321 4.5.2) at C speed: our lines all end in CRLF, and a message
        # starts with a header, never a dot.
        data = raw.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        async with self._slots:
            for attempt in range(2):
                conn = await self._checkout(state, reuse=attempt == 0)
                if isinstance(conn, Transient):
                    return conn
                reused = conn.messages > 0
                if start is not None:
                    await wait_until(start[0] - start[2])
                try:
                    result = await self._transaction(conn, sender, recipient, data, len(raw), start)
                except BaseException:  # cancelled mid-transaction: the session state is unknown
                    conn.session.close()
                    raise
                self._checkin(conn, keep=result.keep)
                if not (result.stale and reused):
                    break
                self.stats.stale_retries += 1
            return result.outcome

    async def _checkout(self, state: _BatchState, *, reuse: bool) -> _Connection | Transient:
        now = time.monotonic()
        while reuse and self._idle:
            conn = self._idle.pop()
            if not conn.session.is_open or now - conn.opened > MAX_CONNECTION_AGE:
                await _quit(conn)
                continue
            if now - conn.last_used > IDLE_CHECK_SECONDS:
                try:
                    async with asyncio.timeout(self.settings.timeout):
                        reply = await conn.session.command(b"NOOP")
                except (TimeoutError, OSError, ProtocolViolation):
                    reply = None
                if reply is None or reply.code != 250:
                    conn.session.close()
                    continue
            return conn
        if state.connect_failure is not None:
            return state.connect_failure
        try:
            return await self._connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            state.connect_failure = _connect_failure(exc, self.settings)
            return state.connect_failure

    def _checkin(self, conn: _Connection, *, keep: bool) -> None:
        conn.last_used = time.monotonic()
        if keep and conn.session.is_open and not self._closed:
            self._idle.append(conn)
        else:
            conn.session.close()

    async def _connect(self) -> _Connection:
        s = self.settings
        if s.tls != "none" and self._tls_context is None:
            # Loading the system CA store takes tens of milliseconds: once, off the event loop.
            self._tls_context = await asyncio.to_thread(_tls_context, s.verify, s.cafile)
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            local_hostname=self._local_hostname,
            timeout=s.timeout,
            use_tls=s.tls == "tls",
            start_tls=s.tls == "starttls",
            tls_context=self._tls_context if s.tls != "none" else None,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:  # plaintext without AUTH: connect() did not greet
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
            session = SmtpSession.take_over(smtp)
        except BaseException:
            smtp.close()
            raise
        self.stats.connections_opened += 1
        if self._first_trip is None and not self._round_trips:
            try:
                await self._time_first_trip(session)
            except BaseException:  # cancelled: a worker's warm-up is bounded in time
                session.close()
                raise
        now = time.monotonic()
        return _Connection(session=session, opened=now, last_used=now)

    async def _time_first_trip(self, session: SmtpSession) -> None:
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout):
                reply = await session.command(b"NOOP")
        except (TimeoutError, OSError, ProtocolViolation):
            return  # the send that follows finds out what is wrong with the connection
        if reply.code == 250:
            self._first_trip = time.monotonic() - sent

    async def _transaction(
        self,
        conn: _Connection,
        sender: str,
        recipient: str,
        data: bytes,
        size: int,
        start: tuple[float, float, float] | None,
    ) -> _Result:
        """MAIL, RCPT, DATA (pipelined when offered), then the dot-stuffed message; with ``start``
        = (at, by, lead) (monotonic), the envelope's writes by ``by - lead`` and the message's
        from ``at`` to ``by``, or none of them."""
        session = conn.session
        envelope_by = None if start is None else start[1] - start[2]
        if _late(envelope_by):
            return _Result(None, keep=True)
        conn.messages += 1
        self.stats.messages += 1
        commands = _envelope_commands(session, sender, recipient, data, size)
        if isinstance(commands, Permanent):
            return _Result(commands, keep=True)
        mail, rcpt = commands
        replies: list[Reply] = []
        stage = "MAIL"
        try:
            async with asyncio.timeout(self.settings.timeout):
                on_time = await self._envelope(session, mail, rcpt, replies, envelope_by)
            if not on_time:  # the server has an envelope and no message: clear it
                return _Result(ABANDONED, keep=await self._reset(session, replies[-1]))
            failed = _first_failure(replies)
            if failed is not None:
                stage, reply = failed
                if replies[-1].code == 354:  # a lenient server: end the empty message
                    async with asyncio.timeout(self.settings.timeout):
                        await session.command(b".")
                outcome = classify_reply(reply.code, reply.text, stage=stage)
                return _Result(outcome, keep=await self._reset(session, reply))
            if start is not None:
                await wait_until(start[0])
                if _late(start[1]):  # after 354 only hanging up keeps the message from counting
                    session.close()
                    return _Result(ABANDONED, keep=False)
            stage = "DATA"
            # The duplicate window: wait long for the reply to the final '.' (RFC 1047).
            async with asyncio.timeout(self.settings.data_timeout):
                session.write(data)
                reply = await session.read_reply()
        except TimeoutError:
            session.close()
            reason = _lost_reason("timed out", stage, replies)
            return _Result(Transient(reason, may_have_arrived=stage == "DATA"), keep=False)
        except OSError as exc:  # SessionClosed included
            session.close()
            # Before the message itself left, nothing can have been delivered: on a reused
            # (possibly stale) connection that is worth one retry on a fresh one.
            reason = _lost_reason(str(exc), stage, replies)
            outcome = Transient(reason, may_have_arrived=stage == "DATA")
            return _Result(outcome, keep=False, stale=stage != "DATA")
        except ProtocolViolation as exc:
            session.close()
            where = "the end of data" if stage == "DATA" else _stage(replies)
            reason = f"SMTP protocol error at {where}: {exc}"
            return _Result(Transient(reason, may_have_arrived=stage == "DATA"), keep=False)
        outcome = classify_reply(reply.code, reply.text, stage="DATA")
        if isinstance(outcome, Sent):
            return _Result(outcome, keep=True)
        return _Result(outcome, keep=await self._reset(session, reply))

    async def _envelope(
        self,
        session: SmtpSession,
        mail: bytes,
        rcpt: bytes,
        replies: list[Reply],
        deadline: float | None,
    ) -> bool:
        """``_envelope``, timed: an accepted envelope's round trip feeds ``lead``."""
        written = time.monotonic()
        on_time = await _envelope(session, mail, rcpt, replies, deadline)
        if len(replies) == 3 and replies[2].code == 354:
            self._round_trips.append(time.monotonic() - written)
        return on_time

    async def _reset(self, session: SmtpSession, refusal: Reply) -> bool:
        """RSET after a refusal so the next message starts clean; False: drop the connection.

        421 means the server is closing the channel (RFC 5321 3.8): no RSET, just hang up.
        """
        if refusal.code == 421 or not session.is_open:
            session.close()
            return False
        try:
            async with asyncio.timeout(self.settings.timeout):
                reply = await session.command(b"RSET")
        except (TimeoutError, OSError, ProtocolViolation):
            reply = None
        if reply is None or reply.code != 250:
            session.close()
            return False
        return True


async def _envelope(
    session: SmtpSession, mail: bytes, rcpt: bytes, replies: list[Reply], deadline: float | None
) -> bool:
    """Collect the replies to MAIL, RCPT and DATA into ``replies``: one write when the server
    offers PIPELINING (RFC 2920), else one command at a time, stopping at the first refusal.
    False: a command was not sent because ``deadline`` had passed (the caller checked the first)."""
    if session.pipelining:
        session.write(mail + b"\r\n" + rcpt + b"\r\nDATA\r\n")
        for _ in range(3):
            replies.append(await session.read_reply())
        return True
    replies.append(await session.command(mail))
    if replies[0].code == 250:
        if _late(deadline):
            return False
        replies.append(await session.command(rcpt))
        if replies[1].code in (250, 251):
            if _late(deadline):
                return False
            replies.append(await session.command(b"DATA"))
    return True


def _envelope_commands(
    session: SmtpSession, sender: str, recipient: str, data: bytes, size: int
) -> tuple[bytes, bytes] | Permanent:
    """MAIL FROM and RCPT TO with the extensions this message needs and the server offers."""
    utf8 = not (sender.isascii() and recipient.isascii())
    if utf8 and not session.supports("smtputf8"):
        return Permanent("the address needs SMTPUTF8, which the server does not offer")
    encoding = "utf-8" if utf8 else "ascii"
    mail = b"MAIL FROM:<" + sender.encode(encoding) + b">"
    if session.supports("size"):
        mail += b" SIZE=%d" % size
    if utf8:
        mail += b" SMTPUTF8"
    if not data.isascii() and session.supports("8bitmime"):
        mail += b" BODY=8BITMIME"
    return mail, b"RCPT TO:<" + recipient.encode(encoding) + b">"


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _stage(replies: list[Reply]) -> str:
    """Where the envelope broke off: the first of MAIL / RCPT / DATA without a reply."""
    return ("MAIL", "RCPT", "DATA")[min(len(replies), 2)]


def _first_failure(replies: list[Reply]) -> tuple[str, Reply] | None:
    """The first refused step of MAIL / RCPT / DATA, or None when DATA got its 354."""
    for stage, reply, ok in zip(
        ("MAIL", "RCPT", "DATA"), replies, ((250,), (250, 251), (354,)), strict=False
    ):
        if reply.code not in ok:
            return stage, reply
    return None


def _envelope_address(address: str) -> str:
    """The address for MAIL FROM / RCPT TO: IDNA domain, and nothing that could end the command."""
    address = header_address(address)
    if _UNSAFE_IN_ENVELOPE.search(address):
        raise ValueError(f"{address!r} cannot go in an SMTP envelope")
    return address


def _lost_reason(what: str, stage: str, replies: list[Reply]) -> str:
    """``stage`` is DATA once the message itself was written: the RFC 1047 duplicate window."""
    if stage == "DATA":
        return f"{what} after the message was sent: the server may have accepted it"
    return f"{what} at {_stage(replies)}"


def _connect_failure(exc: BaseException, settings: SmtpSettings) -> Transient:
    """A connection that cannot be opened is never the message's fault: always ``Transient``."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        throttled = exc.code == 421 or exc.message.startswith("4.7.")
        return Transient(f"{where} answered {exc.code} {exc.message}", throttled=throttled)
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in str(exc):
        return Transient(f"{where}: {exc} (use ?tls=none for a plaintext relay)")
    return Transient(f"cannot connect to {where}: {exc.__class__.__name__}: {exc}")


async def _quit(conn: _Connection) -> None:
    try:
        if conn.session.is_open:
            async with asyncio.timeout(QUIT_TIMEOUT):
                await conn.session.command(b"QUIT")
    except (TimeoutError, OSError, ProtocolViolation):
        pass
    finally:
        conn.session.close()


def _tls_context(verify: bool, cafile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def probe(settings: SmtpSettings) -> tuple[bool, str]:
    """Connect and say hello as a send would (TLS or STARTTLS, EHLO, AUTH when configured), then
    QUIT: (whether it all worked, what the server answered or what went wrong)."""
    context = None
    if settings.tls != "none":
        context = await asyncio.to_thread(_tls_context, settings.verify, settings.cafile)
    smtp = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        username=settings.username,
        password=settings.password,
        local_hostname=settings.helo or await asyncio.to_thread(socket.getfqdn),
        timeout=settings.timeout,
        use_tls=settings.tls == "tls",
        start_tls=settings.tls == "starttls",
        tls_context=context,
    )
    try:
        greeting = await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()
        hello = smtp.last_ehlo_response
        answer = f"{greeting.code} {' '.join(greeting.message.split())}"
        if hello is not None:
            answer += (
                f"; EHLO: {hello.code} {hello.message.splitlines()[0] if hello.message else ''}"
            )
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            async with asyncio.timeout(QUIT_TIMEOUT):
                await smtp.quit()
        return True, answer.strip()
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return False, _connect_failure(exc, settings).reason
    finally:
        smtp.close()
