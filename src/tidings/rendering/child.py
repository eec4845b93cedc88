"""The render process: compiles and renders templates for ``pool.RenderPool`` under hard limits.

``python -m tidings.rendering.child SOCKET_FD PART_FD``, started by the pool. It runs on one
thread and never sees the signing secret (its parent makes the signed links). Its limits, set by
the process on itself:

* memory: once warmed up, its address space is measured and capped (``RLIMIT_AS``) at that plus
  ``render_max_bytes`` plus ``ADDRESS_SPACE_SLACK``; an allocation past it is a ``MemoryError``;
* CPU: before each job the soft ``RLIMIT_CPU`` is set to the CPU time used so far plus the
  timeout (rounded up: the limit counts whole seconds), and the kernel's ``SIGXCPU`` interrupts the
  render wherever it is (``RenderInterrupted``).

After either, it answers for that job and exits; its parent starts a fresh process. Its parent
also kills it when a job takes too long by the wall clock (stuck in one C call, or starved).

Protocol, pickled over one socket: the parent sends the ``Limits`` once, then ``(sources,
jobs)`` for each batch, a job being
``(source index, variables)`` (variables ``None``: compile only); the process answers the jobs in
order, in lists of replies (see ``Reply``), then ``("done", retire)``. ``None`` asks it to exit.
Replies go in lists of up to ``REPLY_CHUNK``, or whatever is done after ``FLUSH_SECONDS``: one
message a reply cost the worker a wake-up of its pool thread, a GIL hand-over and three system
calls per mail. While it works, the shared memory of ``PART_FD`` (``STATE_SIZE`` bytes) holds the
index in ``PARTS`` of the part it is on and the position in the batch of the job it is on, so that
its parent can name both even after killing it, and render again the jobs whose replies were
not sent yet.
"""

from __future__ import annotations

import math
import mmap
import os
import resource
import signal
import struct
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from tidings import errors
from tidings.rendering.localtime import FALLBACK_LOCALE, LOCAL_KEY
from tidings.rendering.renderer import Part, Renderer, ResourceExhausted
from tidings.rendering.sandbox import RenderInterrupted

PARTS: tuple[Part, ...] = ("subject", "html", "text")
#: Address space allowed beyond the warmed-up process and the render's own allowance: compiled
#: templates in the cache, the batch being received and the replies being sent.
ADDRESS_SPACE_SLACK = 48 * 1024 * 1024  # bytes
#: A process whose address space grew by more than this since start (fragmentation, cache) is
#: replaced after its batch, so that the next render still gets its whole allowance.
RETIRE_GROWTH = 32 * 1024 * 1024  # bytes
NICENESS = 10  # added to the parent's scheduling niceness
REPLY_CHUNK = 32  # replies sent in one message at most
#: Replies wait no longer than this for company, so that the parent's wall-clock bound of a job
#: (seconds) is hardly shortened by the wait of the replies before it.
FLUSH_SECONDS = 0.02
#: The shared state: byte 0 the part (index in ``PARTS``), bytes 1-4 the job's position.
STATE_SIZE = 5
_WARM_UP_HTML = (
    '<p title="{{ a }}">{% for i in range(3) %}{{ i|string|upper }}{% endfor %}</p>'
    "{{ {'k': [1, 2]}|tojson }}{{ [3, 1]|sort|join(',') }}{{ a|pprint }}<a href=x>y</a><br>"
    "{{ t|localtime('EEEE d MMMM y, HH:mm zzzz') }}"
)

#: ``("ok", subject, html, text)``, ``("ok",)`` for a compile check, or
#: ``("error", kind, message, field, line)`` with kind ``syntax``, ``render``, ``invalid`` or
#: ``exhausted`` (a hard limit: the process is replaced).
Reply = tuple[Any, ...]
Source = tuple[str, str | None, str | None]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a render process needs of the settings (it never imports them: it starts faster)."""

    render_timeout_seconds: float  # CPU seconds per job
    render_max_bytes: int  # address space a job may take beyond the warmed-up process
    render_max_output_bytes: int  # the longest rendered part
    public_url: str = ""  # unused here: links are made by the parent


class _CpuAlarm:
    """Turns the kernel's SIGXCPU into ``RenderInterrupted`` while a job runs, and only then."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.armed = False
        self.hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        signal.signal(signal.SIGXCPU, self._fire)

    def _fire(self, _signum: int, _frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            raise RenderInterrupted(
                f"rendering took longer than the time limit ({self.timeout:g} s of CPU)"
            )

    def arm(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + self.timeout)
        if self.hard != resource.RLIM_INFINITY:
            soft = min(soft, self.hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, self.hard))
        self.armed = True

    def disarm(self) -> None:
        self.armed = False
        resource.setrlimit(resource.RLIMIT_CPU, (self.hard, self.hard))


def address_space() -> int | None:
    """This process's virtual memory size in bytes (what ``RLIMIT_AS`` limits), where known."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def main(connection: Connection, part: mmap.mmap) -> None:
    """The process's whole life: warm up, limit itself, then answer batches until told to stop."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the process it serves: a render burning its CPU allowance never slows the answers to
    # requests or the lease renewals of the process that waits for it.
    os.nice(NICENESS)
    settings: Limits = connection.recv()
    codes = {name: index for index, name in enumerate(PARTS)}

    def on_part(name: Part) -> None:
        part[0] = codes[name]

    renderer = Renderer(settings=settings, secret_key="", on_part=on_part)
    alarm = _CpuAlarm(settings.render_timeout_seconds)
    _warm_up(renderer)
    baseline = address_space()
    if baseline is not None:
        limit = baseline + settings.render_max_bytes + ADDRESS_SPACE_SLACK
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    connection.send(("ready", os.getpid()))
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        sources, jobs = request
        pending: list[Reply] = []
        flushed = time.monotonic()
        for position, (index, variables) in enumerate(jobs):
            struct.pack_into("<I", part, 1, position)
            reply, fatal = _run(renderer, alarm, sources[index], variables, part)
            pending.append(reply)
            now = time.monotonic()
            if fatal or len(pending) >= REPLY_CHUNK or now - flushed >= FLUSH_SECONDS:
                connection.send(pending)
                pending, flushed = [], now
            if fatal:
                connection.send(("done", True))
                return
        if pending:
            connection.send(pending)
        grown = address_space()
        retire = baseline is not None and grown is not None and grown - baseline > RETIRE_GROWTH
        connection.send(("done", retire))
        if retire:
            return


def _warm_up(renderer: Renderer) -> None:
    """Load what the first real render would (lazy imports, caches) before measuring memory."""
    compiled = renderer.compile(subject="{{ a }}", html=_WARM_UP_HTML, text=None)
    moment = datetime(2027, 3, 1, 14, tzinfo=UTC)
    renderer.render_variables(
        compiled, {"a": "warm", "t": moment, LOCAL_KEY: ("Europe/Berlin", FALLBACK_LOCALE)}
    )


def _run(
    renderer: Renderer,
    alarm: _CpuAlarm,
    source: Source,
    variables: dict[str, Any] | None,
    part: mmap.mmap,
) -> tuple[Reply, bool]:
    """One job's reply, and whether the process must be replaced after it."""
    part[0] = 0
    try:
        alarm.arm()
        try:
            subject, html, text = source
            compiled = renderer.compile(subject=subject, html=html, text=text)
            if variables is None:
                return ("ok",), False
            content = renderer.render_variables(compiled, variables)
            return ("ok", content.subject, content.html, content.text), False
        finally:
            alarm.disarm()
    except ResourceExhausted as exc:
        return ("error", "exhausted", exc.message, exc.field, None), True
    except errors.TemplateSyntaxError as exc:
        return ("error", "syntax", exc.message, exc.field, exc.line), False
    except errors.RenderError as exc:
        return ("error", "render", exc.message, exc.field, None), False
    except errors.InvalidInput as exc:
        return ("error", "invalid", exc.message, exc.field, None), False
    except RenderInterrupted as exc:  # between two parts
        return ("error", "exhausted", str(exc), PARTS[part[0]], None), True
    except MemoryError:
        message = "the template needs too much memory"
        return ("error", "exhausted", message, PARTS[part[0]], None), True
    except Exception as exc:  # a bug of ours: this job fails, a fresh process takes the next
        message = f"the template could not be rendered ({type(exc).__name__})"
        return ("error", "render", message, PARTS[part[0]], None), True


if __name__ == "__main__":
    with open(int(sys.argv[2]), "r+b") as part_file:
        main(Connection(int(sys.argv[1])), mmap.mmap(part_file.fileno(), STATE_SIZE))
