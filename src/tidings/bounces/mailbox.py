"""Where reports come in: a small SMTP receiver (the MTA relays the bounce address to it), or a
maildir the MTA delivers into. Either way a report is parsed, matched and recorded in one
transaction; a report that cannot be used changes nothing and says why (an SMTP 550 with the
reason, or a log line and a move to the maildir's ``.Failed`` folder).

A maildir file leaves ``new/`` on every pass, whatever it holds: to ``cur/`` when used, to
``.Failed/`` with the reason logged when not. Only an unavailable database (the report may be
fine, the next pass records it) or a file system that refuses the move keeps it in ``new/``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tidings.bounces.reports import ParsedReport, parse_report
from tidings.db.engine import transaction
from tidings.errors import ConfigurationError, InvalidInput, TidingsError
from tidings.runtime import Runtime
from tidings.services.inbound import InboundOutcome, InboundResult, record_mailbox_report

log = logging.getLogger("tidings.bounces")

MAX_REPORT_BYTES = 10 * 1024 * 1024  # a report returns at most the original message
FAILED_FOLDER = ".Failed"  # Maildir++ folder for reports that could not be used
SEEN_SUFFIX = ":2,S"  # a maildir message moved to cur/ after it was read
MAX_REPLY_TEXT = 400  # characters of a reason in an SMTP reply
#: Errors that say the database cannot be used right now (down, locked, pool exhausted), not that
#: the report is bad: the report stays in new/ and the pass stops, since every other report would
#: wait for the same database.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


@dataclass(frozen=True, slots=True)
class Processed:
    report: ParsedReport
    result: InboundResult

    def summary(self) -> str:
        kind = self.result.kind.replace("_", " ") if self.result.kind else "report"
        if self.result.outcome is InboundOutcome.recorded:
            return f"{kind} recorded for message {self.result.message_id}"
        if self.result.outcome is InboundOutcome.duplicate:
            return f"{kind} for message {self.result.message_id} was already recorded"
        return f"nothing to record ({self.result.reason})"


def process_report(
    runtime: Runtime, raw: bytes, envelope_recipients: Sequence[str] = ()
) -> Processed:
    """Parse ``raw`` and record what it reports; raises ``TidingsError`` and changes nothing when
    it is malformed (``InvalidInput``) or names no message of ours (``NotFound``)."""
    if len(raw) > MAX_REPORT_BYTES:
        raise InvalidInput(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    report = parse_report(raw)
    with transaction(runtime.sessions) as session:
        result = record_mailbox_report(
            session=session,
            report=report,
            envelope_recipients=envelope_recipients,
            secret_key=runtime.secret_key,
            now=runtime.clock.now(),
        )
    return Processed(report=report, result=result)


# -- SMTP ---------------------------------------------------------------------------------------


def _reply_text(message: str) -> str:
    """One printable ASCII line: an SMTP reply cannot carry anything else."""
    flat = " ".join(message.split()).encode("ascii", "replace").decode()
    return flat[:MAX_REPLY_TEXT]


class ReportHandler:
    """aiosmtpd handler: every message received is a report; the reply says what became of it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content or b""
        recipients = list(envelope.rcpt_tos or [])
        try:
            processed = await asyncio.to_thread(process_report, self.runtime, raw, recipients)
        except TidingsError as exc:
            log.warning("refused a report from <%s>: %s", envelope.mail_from, exc.message)
            return f"550 5.6.0 {_reply_text(exc.message)}"
        except Exception:
            log.exception("a report from <%s> could not be recorded", envelope.mail_from)
            return "451 4.3.0 the report could not be recorded now; try again later"
        log.info("report from <%s>: %s", envelope.mail_from, processed.summary())
        return f"250 2.0.0 {_reply_text(processed.summary())}"


async def start_smtp_receiver(runtime: Runtime, host: str, port: int) -> asyncio.Server:
    """Listen for reports on ``host:port`` (port 0: any free port, see ``server.sockets``)."""
    loop = asyncio.get_running_loop()
    handler = ReportHandler(runtime)
    return await loop.create_server(
        lambda: SMTP(
            handler,
            data_size_limit=MAX_REPORT_BYTES,
            ident="Tidings bounce mailbox",
            decode_data=False,
        ),
        host=host,
        port=port,
    )


async def serve_smtp(runtime: Runtime, host: str, port: int, stop: asyncio.Event) -> None:
    server = await start_smtp_receiver(runtime, host, port)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


# -- maildir ------------------------------------------------------------------------------------


@dataclass
class MaildirSummary:
    recorded: int = 0
    duplicate: int = 0
    ignored: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # file name, reason
    left: int = 0  # reports kept in new/ for the next pass (database unavailable, a move refused)


def _move(source: Path, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(source, folder / name)


def _set_aside(path: Path, entry: Path, reason: str, summary: MaildirSummary) -> None:
    """Move an unusable report to ``.Failed/new/`` (a Maildir++ folder any mail client opens)."""
    try:
        for sub in ("cur", "tmp"):
            (path / FAILED_FOLDER / sub).mkdir(parents=True, exist_ok=True)
        _move(entry, path / FAILED_FOLDER / "new", entry.name)
    except OSError as exc:
        log.error("%s: %s; it cannot be moved to %s: %s", entry.name, reason, FAILED_FOLDER, exc)
        summary.left += 1
        return
    log.warning("%s: %s (moved to %s)", entry.name, reason, FAILED_FOLDER)
    summary.failed.append((entry.name, reason))


def _count(summary: MaildirSummary, outcome: InboundOutcome) -> None:
    if outcome is InboundOutcome.recorded:
        summary.recorded += 1
    elif outcome is InboundOutcome.duplicate:
        summary.duplicate += 1
    else:
        summary.ignored += 1


def process_maildir(runtime: Runtime, path: Path) -> MaildirSummary:
    """Process every report in ``path/new``: used ones move to ``cur/`` (seen), unusable ones to
    ``.Failed/new/`` with the reason logged. When the database is unavailable the pass stops and
    the rest stay in ``new/`` for the next one."""
    new = path / "new"
    if not new.is_dir():
        raise ConfigurationError(f"{path} is not a maildir: it has no new/ folder")
    summary = MaildirSummary()
    entries = sorted(e for e in new.iterdir() if not e.name.startswith(".") and e.is_file())
    for index, entry in enumerate(entries):
        try:
            if entry.stat().st_size > MAX_REPORT_BYTES:
                raise InvalidInput(f"the report is larger than {MAX_REPORT_BYTES} bytes")
            processed = process_report(runtime, entry.read_bytes())
        except FileNotFoundError:
            continue  # another reader of this maildir took it
        except TidingsError as exc:
            _set_aside(path, entry, exc.message, summary)
            continue
        except DATABASE_UNAVAILABLE as exc:
            remaining = len(entries) - index
            summary.left += remaining
            log.error("the database is unavailable, %d reports stay in new/: %s", remaining, exc)
            break
        except Exception as exc:
            # A report we cannot handle would fail the same way on every pass: set it aside, or
            # --follow would retry it forever.
            log.exception("%s could not be processed", entry.name)
            _set_aside(path, entry, f"the report could not be processed ({exc!r:.200})", summary)
            continue
        log.info("%s: %s", entry.name, processed.summary())
        try:
            _move(entry, path / "cur", entry.name.split(":", 1)[0] + SEEN_SUFFIX)
        except OSError as exc:  # recorded: a second pass finds it a duplicate
            log.error("%s was recorded but cannot be moved to cur/: %s", entry.name, exc)
        _count(summary, processed.result.outcome)
    return summary
