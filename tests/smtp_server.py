"""A real SMTP server for tests (aiosmtpd, in a thread, on 127.0.0.1 and a free port).

It records every message it receives and can misbehave on demand, the way real servers do::

    with SmtpTestServer() as server:                    # or the ``smtp_server`` fixture
        server.fail("bob@example.com", reply(NO_SUCH_USER))            # every attempt
        server.fail("amy@example.com", reply(TRY_LATER), times=2)      # the first 2, then accept
        server.fail(None, drop(at="END"), times=1)      # any recipient: the duplicate window
        server.script(None, slow(0.5, at="MAIL"))       # transaction 1 normal, 2 slow, then normal
        server.fail("cy@example.com", hold(TRY_LATER), times=1)   # no reply until release_holds()
        server.limit_rate("slow.test", 20)   # 421 at RCPT while 20 were accepted in the last second
        server.far_away("far.test", 0.03)    # clients that greet as far.test: 30 ms to NOOP, RCPT
        ... send to server.url ...
        server.wait_for(3)
        server.messages[0].message["Subject"]

Fault stages: ``MAIL`` (the sender; only for ``fail(None, ...)``), ``RCPT``, ``DATA`` (the DATA
command, before any content: nothing was delivered) and ``END`` (after the final '.', before the
reply: the message *was* received, recorded with ``replied=False``, and the client cannot know).

To use the fixture from another test module or a conftest:
``from tests.smtp_server import smtp_server  # noqa: F401`` (or ``pytest_plugins``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import ipaddress
import itertools
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

Stage = Literal["MAIL", "RCPT", "DATA", "END"]

TRY_LATER = "451 4.3.0 try later"
THROTTLED = "421 4.7.0 throttled, slow down"
NO_SUCH_USER = "550 5.1.1 no such user"
POLICY_REJECT = "554 5.7.1 rejected by policy"
SLOW_DOWN = "421 4.7.0 slow down"


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do instead of the normal reply at ``stage``."""

    action: Literal["reply", "drop", "delay", "hold"]
    stage: Stage
    reply: str = ""
    delay: float = 0.0  # seconds, for "delay"


def reply(text: str, *, at: Stage = "RCPT") -> Fault:
    """Answer ``text`` (e.g. ``"451 4.3.0 try later"``) at ``at``."""
    return Fault("reply", at, reply=text)


def drop(*, at: Stage = "DATA") -> Fault:
    """Close the connection at ``at`` without a reply."""
    return Fault("drop", at)


def slow(seconds: float, *, at: Stage = "END") -> Fault:
    """Wait ``seconds`` before answering normally at ``at``."""
    return Fault("delay", at, delay=seconds)


def hold(text: str, *, at: Stage = "RCPT") -> Fault:
    """Say nothing at ``at`` until the test calls ``release_holds()``, then answer ``text``: a
    client stays mid-transaction for exactly as long as a test needs it there."""
    return Fault("hold", at, reply=text)


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes  # as received, dot-unstuffed
    message: EmailMessage  # parsed with email.policy.default
    received_monotonic: float  # time.monotonic() when the final '.' arrived
    received_at: float  # time.time() likewise
    connection: int  # which connection carried it (1, 2, ... in order of EHLO/HELO)
    mail_options: tuple[str, ...]
    authenticated_as: str | None
    tls: bool
    replied: bool = True  # False: dropped after the final '.' (the RFC 1047 duplicate window)


@dataclass
class _Rule:
    recipient: str | None  # None: any transaction
    fault: Fault
    remaining: int | None  # None: forever


@dataclass
class _Transaction:
    number: int
    scripted: Fault | None
    rcpt_faults: list[Fault] = field(default_factory=list)


class SmtpTestServer:
    """Start with ``start()`` or ``with``; ``url`` is the ``TIDINGS_TRANSPORT_URL`` to use."""

    def __init__(
        self,
        *,
        starttls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls_context: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        pipelining: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._messages: list[ReceivedMessage] = []
        self._rules: list[_Rule] = []
        self._script: list[Fault | None] = []
        self._transactions = itertools.count(1)
        self._connections = itertools.count(1)
        self._connection_count = 0
        self._attempts: dict[str, list[float]] = {}
        # Per domain: (accepted per second, the refusal, monotonic times of recent acceptances).
        self._rate_limits: dict[str, tuple[int, str, deque[float]]] = {}
        self._far: dict[str, float] = {}  # EHLO name: how much later its RCPTs are answered
        self._released = asyncio.Event()  # set on the server's loop: release_holds()
        self._auth = auth
        self.pipelining = pipelining  # advertise PIPELINING (aiosmtpd reads commands in order)
        self._live: set[SMTP] = set()
        self._noops = 0
        self.implicit_tls = implicit_tls_context is not None
        self.starttls = starttls_context is not None
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True}
        if starttls_context is not None:
            kwargs.update(tls_context=starttls_context, require_starttls=require_starttls)
        if auth is not None:
            # auth_required would need auth_require_tls, which aiosmtpd warns about otherwise.
            kwargs.update(
                authenticator=self._authenticate,
                auth_require_tls=starttls_context is not None or implicit_tls_context is not None,
            )
        self._controller = _Controller(
            _Handler(self), hostname="127.0.0.1", ssl_context=implicit_tls_context, **kwargs
        )
        self.host = "127.0.0.1"
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> SmtpTestServer:
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """A transport URL for this server: plaintext, or the TLS mode it was started with."""
        if self.implicit_tls:
            return f"smtps://{self.host}:{self.port}"
        tls = "starttls" if self.starttls else "none"
        return f"smtp://{self.host}:{self.port}?tls={tls}"

    # --- faults ----------------------------------------------------------------------------

    def fail(self, recipient: str | None, fault: Fault, *, times: int | None = None) -> None:
        """Apply ``fault`` to every attempt to ``recipient`` (any, when None), or the first ``times``."""
        if recipient is None and fault.stage not in ("MAIL", "RCPT", "DATA", "END"):
            raise ValueError(fault.stage)
        if recipient is not None and fault.stage == "MAIL":
            raise ValueError("the recipient is not known yet at MAIL; use fail(None, ...)")
        with self._lock:
            self._rules.append(_Rule(recipient and recipient.lower(), fault, times))

    def limit_rate(self, domain: str, per_second: int, refusal: str = SLOW_DOWN) -> None:
        """Answer ``refusal`` at RCPT to any address at ``domain`` while ``per_second`` of them
        were accepted in the last second, as providers defer a sender that goes too fast: at most
        ``per_second`` get through in any second, however fast the client tries."""
        with self._lock:
            self._rate_limits[domain.lower()] = (per_second, refusal, deque())

    def far_away(self, helo: str, seconds: float) -> None:
        """Answer the NOOPs and RCPTs of clients that greet as ``helo`` ``seconds`` late, as a
        server that far away would (each RCPT is noted when it arrives)."""
        with self._lock:
            self._far[helo.lower()] = seconds

    def script(self, *steps: Fault | None) -> None:
        """One step per coming transaction, in order (None: behave); afterwards, behave."""
        with self._lock:
            self._script.extend(steps)

    def disconnect_all(self) -> int:
        """Close every client connection now, as a server does with idle clients; how many."""

        def close() -> int:
            live = [smtp for smtp in self._live if smtp.transport is not None]
            self._live.clear()
            for smtp in live:
                assert smtp.transport is not None
                smtp.transport.close()
            return len(live)

        future = asyncio.run_coroutine_threadsafe(_call(close), self._controller.loop)
        return int(future.result(timeout=5))

    def release_holds(self) -> None:
        """Let every ``hold`` fault, now and later, answer at once."""
        self._controller.loop.call_soon_threadsafe(self._released.set)

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()
            self._script.clear()

    # --- what happened -----------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """Connections that said EHLO/HELO (the controller's own start-up probe does not)."""
        with self._lock:
            return self._connection_count

    @property
    def noops(self) -> int:
        with self._lock:
            return self._noops

    def attempts(self, recipient: str) -> int:
        """Transactions that named ``recipient`` in RCPT TO, accepted or not."""
        return len(self.attempt_times(recipient))

    def attempt_times(self, recipient: str) -> list[float]:
        """``time.monotonic()`` at each RCPT TO naming ``recipient``, in order."""
        with self._lock:
            return list(self._attempts.get(recipient.lower(), []))

    def domain_attempt_times(self, domain: str) -> list[float]:
        """``time.monotonic()`` at each RCPT TO naming an address at ``domain``, in order."""
        suffix = "@" + domain.lower()
        with self._lock:
            return sorted(
                t for r, times in self._attempts.items() if r.endswith(suffix) for t in times
            )

    def all_attempt_times(self) -> dict[str, list[float]]:
        """``attempt_times`` of every recipient, by recipient (lower case)."""
        with self._lock:
            return {r: list(times) for r, times in self._attempts.items()}

    def to(self, recipient: str) -> list[ReceivedMessage]:
        return [m for m in self.messages if recipient.lower() in (r.lower() for r in m.rcpt_tos)]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until ``count`` messages arrived; AssertionError after ``timeout`` seconds."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(f"expected {count} messages, got {len(self._messages)}")
            return list(self._messages)

    # --- called from the server thread --------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self._auth is not None
            and (data.login.decode(), data.password.decode()) == self._auth
        )
        return AuthResult(success=ok, handled=False, auth_data=data.login.decode() if ok else None)

    def _new_connection(self) -> int:
        with self._lock:
            self._connection_count += 1
            return next(self._connections)

    def _begin_transaction(self) -> _Transaction:
        with self._lock:
            scripted = self._script.pop(0) if self._script else None
            return _Transaction(number=next(self._transactions), scripted=scripted)

    def _fault_for(self, stage: Stage, recipients: list[str], txn: _Transaction) -> Fault | None:
        """The fault to apply now, consuming one use of it."""
        if txn.scripted is not None and txn.scripted.stage == stage:
            fault, txn.scripted = txn.scripted, None
            return fault
        with self._lock:
            for rule in self._rules:
                if rule.fault.stage != stage or rule.remaining == 0:
                    continue
                if rule.recipient is not None and rule.recipient not in recipients:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule.fault
        return None

    def _count_attempt(self, recipient: str) -> None:
        with self._lock:
            self._attempts.setdefault(recipient.lower(), []).append(time.monotonic())

    def _over_rate(self, recipient: str) -> str | None:
        """The refusal when ``recipient``'s domain is over its ``limit_rate``, else None (and the
        recipient counts as accepted now)."""
        with self._lock:
            limit = self._rate_limits.get(recipient.rpartition("@")[2].lower())
            if limit is None:
                return None
            per_second, refusal, accepted = limit
            now = time.monotonic()
            while accepted and now - accepted[0] >= 1.0:
                accepted.popleft()
            if len(accepted) >= per_second:
                return refusal
            accepted.append(now)
            return None

    def _record(self, smtp: SMTP, session: Session, envelope: Envelope, *, replied: bool) -> None:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw,
            message=parsed,
            received_monotonic=time.monotonic(),
            received_at=time.time(),
            connection=getattr(session, "tidings_connection", 0),
            mail_options=tuple(envelope.mail_options),
            authenticated_as=session.auth_data if session.authenticated else None,
            tls=session.ssl is not None  # STARTTLS
            or (
                smtp.transport is not None
                and smtp.transport.get_extra_info("sslcontext") is not None
            ),
            replied=replied,
        )
        with self._arrived:
            self._messages.append(received)
            self._arrived.notify_all()


class _Handler:
    """aiosmtpd hooks: count connections, apply faults, record messages."""

    def __init__(self, server: SmtpTestServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        _connection_of(self.server, smtp, session)
        self.server._live.add(smtp)
        session.host_name = hostname
        if self.server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        _connection_of(self.server, smtp, session)
        self.server._live.add(smtp)
        session.host_name = hostname
        return f"250 {smtp.hostname}"

    async def handle_NOOP(self, smtp: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        with self.server._lock:
            self.server._noops += 1
        distance = self.server._far.get((session.host_name or "").lower())
        if distance:
            await asyncio.sleep(distance)
        return "250 OK"

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        txn = self.server._begin_transaction()
        session.tidings_transaction = txn  # type: ignore[attr-defined]
        fault = self.server._fault_for("MAIL", [], txn)
        refusal = await _apply(smtp, fault, self.server._released)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.server._count_attempt(address)
        distance = self.server._far.get((session.host_name or "").lower())
        if distance:
            await asyncio.sleep(distance)
        txn = _transaction_of(session)
        fault = self.server._fault_for("RCPT", [address.lower()], txn)
        refusal = await _apply(smtp, fault, self.server._released) or self.server._over_rate(
            address
        )
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        txn = _transaction_of(session)
        fault = self.server._fault_for("END", _lower(envelope.rcpt_tos), txn)
        if fault is not None and fault.action == "drop":
            # The message arrived; the client just never hears so.
            self.server._record(smtp, session, envelope, replied=False)
        refusal = await _apply(smtp, fault, self.server._released)
        if refusal:
            return refusal
        self.server._record(smtp, session, envelope, replied=True)
        return f"250 2.0.0 Ok: queued as T{txn.number:05d}"


class _RecordingSMTP(SMTP):
    """aiosmtpd has no hook between the DATA command and the content: add one."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        handler = self.event_handler
        assert isinstance(handler, _Handler)
        assert self.session is not None and self.envelope is not None
        if self.envelope.rcpt_tos:
            txn = _transaction_of(self.session)
            fault = handler.server._fault_for("DATA", _lower(self.envelope.rcpt_tos), txn)
            refusal = await _apply(self, fault, handler.server._released)
            if refusal:
                await self.push(refusal)
                return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    """Binds port 0 (the kernel picks a free port) and builds the recording SMTP class."""

    def factory(self) -> SMTP:
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        async def bind() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
            )
            self.port = server.sockets[0].getsockname()[1]
            return server

        return bind()


async def _apply(smtp: SMTP, fault: Fault | None, released: asyncio.Event) -> str | None:
    """Carry out ``fault``: a reply to send instead, or None to go on normally."""
    if fault is None:
        return None
    if fault.action == "delay":
        await asyncio.sleep(fault.delay)
        return None
    if fault.action == "hold":
        await released.wait()
        return fault.reply
    if fault.action == "reply":
        return fault.reply
    # drop: close, then wait for connection_lost() to cancel this handler.
    assert smtp.transport is not None
    smtp.transport.close()
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _call(function: Any) -> Any:
    return function()


def _connection_of(server: SmtpTestServer, smtp: SMTP, session: Session) -> int:
    # The SMTP instance lives as long as the connection (a session is renewed by STARTTLS).
    number = getattr(smtp, "tidings_connection", None)
    if number is None:
        number = server._new_connection()
        smtp.tidings_connection = number  # type: ignore[attr-defined]
    session.tidings_connection = number  # type: ignore[attr-defined]
    return int(number)


def _transaction_of(session: Session) -> _Transaction:
    txn = getattr(session, "tidings_transaction", None)
    return txn if txn is not None else _Transaction(number=0, scripted=None)


def _lower(addresses: list[str]) -> list[str]:
    return [a.lower() for a in addresses]


# --- TLS helpers -------------------------------------------------------------------------------


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidings test server")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A started plaintext server (``server.url`` uses ``tls=none``), stopped after the test."""
    with SmtpTestServer() as server:
        yield server
