"""``tidings bounces``: the bounce mailbox, as an SMTP receiver or a maildir reader."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer
from rich.markup import escape

from tidings.cli.common import console, err_console, fail, load_settings, open_runtime
from tidings.errors import TidingsError
from tidings.logging import configure_logging
from tidings.runtime import Runtime

FOLLOW_INTERVAL = 2.0  # seconds between looks into the maildir with --follow


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def _serve(runtime: Runtime, host: str, port: int) -> None:
    from tidings.bounces.mailbox import serve_smtp

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await serve_smtp(runtime, host, port, stop)

    console.print(f"bounce mailbox listening on {host}:{port} (SMTP; database: {runtime.dialect})")
    try:
        asyncio.run(main())
    except OSError as exc:  # the port is taken, or the address is not ours
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _read_maildir(runtime: Runtime, maildir: Path, follow: bool) -> None:
    from tidings.bounces.mailbox import process_maildir

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        while True:
            summary = await asyncio.to_thread(process_maildir, runtime, maildir)
            seen = summary.recorded + summary.duplicate + summary.ignored + len(summary.failed)
            if seen or not follow:
                left = f", {summary.left} left in new/ for the next pass" if summary.left else ""
                console.print(
                    f"{summary.recorded} recorded, {summary.duplicate} already recorded,"
                    f" {summary.ignored} with nothing to record, {len(summary.failed)} refused{left}"
                )
            for name, reason in summary.failed:
                err_console.print(f"[yellow]refused[/] {escape(name)}: {escape(reason)}")
            if not follow:
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=FOLLOW_INTERVAL)
                return
            except TimeoutError:
                continue

    try:
        asyncio.run(main())
    except TidingsError as exc:
        raise fail(exc.message) from None


def bounces(
    host: str = typer.Option("127.0.0.1", help="Address the SMTP receiver listens on."),
    port: int = typer.Option(2525, min=1, max=65535, help="Port the SMTP receiver listens on."),
    maildir: Path | None = typer.Option(
        None,
        help="Read reports from this maildir's new/ folder instead of listening for SMTP:"
        " used ones move to cur/, unusable ones to .Failed/.",
        file_okay=False,
    ),
    follow: bool = typer.Option(False, help="With --maildir: keep watching for new reports."),
) -> None:
    """Record bounces and complaints: RFC 3464 delivery status notifications and RFC 5965 (ARF)
    reports, matched to the original message by its Message-ID or a VERP return path."""
    try:
        configure_logging(load_settings())
    except TidingsError as exc:
        raise fail(exc.message) from None
    with open_runtime() as runtime:
        if maildir is not None:
            _read_maildir(runtime, maildir, follow)
        else:
            _serve(runtime, host, port)
