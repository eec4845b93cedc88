"""``RenderPool``: every tenant template compiles and renders here, in a few separate processes
under hard limits, so that no template can stall the process that answers requests, sends mail
and renews leases, nor take its memory.

Why processes: a template is code. The sandbox's checks (``sandbox.py``) stop what they foresee,
but one C call (a regex, ``pprint``, a sort) holds the GIL for as long as it runs and a thread
cannot be stopped, so in-process limits hold only by blocklist. A process can be limited by the
kernel and killed, which holds by construction:

* CPU time: ``RLIMIT_CPU`` per job, set by the render process itself (``child.py``);
* memory: ``RLIMIT_AS`` at the process's warmed-up size plus ``render_max_bytes`` plus slack;
* wall clock: a job without a reply after ``WALL_FACTOR`` times the timeout plus ``WALL_MARGIN``
  is killed here, with its process (stuck in one C call, or starved of CPU).

A process that broke a limit is replaced; the job it was on fails alone with a ``RenderError``
naming the part, and the rest of its batch goes to the fresh process.

Shape:

* ``render_processes`` processes (2 by default), each a fresh interpreter (fork and exec, see
  ``process.py``): never a bare fork of this process, which has threads and an event loop.
  Each is driven by one thread here that sends it a batch and reads its replies as they come;
  the threads only wait on sockets (no GIL held).
* A batch is one round trip: each distinct source is sent once, then each job is a source index
  and the recipient's variables (made here: render processes never see the signing secret). The
  processes cache compiled templates by content, so a campaign compiles once per process.
* Callers: ``check`` / ``render`` / ``render_many`` from threads (the API's sync handlers, the
  CLI), ``render_many_async`` from an event loop (the worker), which awaits without a thread.
* Fast path: content without template syntax whose text part needs no deriving renders to
  itself here (the ``Renderer`` runs no template code for it), with no round trip.

Refinements of the design first suggested (a multiprocessing pool with the forkserver):

* processes are started with ``subprocess`` (see ``process.py``): multiprocessing's ``spawn`` and
  ``forkserver`` import the parent's ``__main__`` again in each child, the whole CLI and API;
  without it a render process starts in about 0.2 s and 23 MB, and never sees pydantic;
* render processes run niced (``child.NICENESS``): on a small machine a render burning its whole
  allowance takes CPU from nothing that answers requests or renews leases;
* the wall-clock bound is a multiple of the CPU limit, not equal to it: on a loaded machine CPU
  time lags the wall clock, and a legitimate render must not be killed for the machine's load;
* the in-process fast path above: a login code with inline content costs no round trip.

Started lazily on first use (``start`` warms it up early), stopped by ``close`` (the runtime's, at
the end of ``serve``, ``worker`` and the app's lifespan); a process forked from this one gets a
pool of its own on first use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tidings import errors, tokens
from tidings.clock import Clock
from tidings.config import Settings
from tidings.rendering import child
from tidings.rendering.process import RenderProcess
from tidings.rendering.renderer import (
    Recipient,
    RenderedContent,
    Renderer,
    ResourceExhausted,
    wanted_links,
)

log = logging.getLogger("tidings.rendering")

WALL_FACTOR = 2  # a job may take this many times its CPU limit by the wall clock ...
WALL_MARGIN = 1.0  # ... plus this many seconds, before its process is killed

RenderResult = RenderedContent | errors.TidingsError


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """A template's parts as written (a stored template, or a message's inline content)."""

    subject: str
    html: str | None
    text: str | None


@dataclass(frozen=True, slots=True)
class RenderJob:
    """One recipient's mail to render."""

    source: TemplateSource
    tenant_id: int
    recipient: Recipient
    data: Mapping[str, Any]
    category: str | None


@dataclass(slots=True)
class _Batch:
    sources: list[child.Source]
    jobs: list[tuple[int, dict[str, Any] | None]]
    future: Future[list[child.Reply]] = field(default_factory=Future)


class RenderPool:
    """Renders tenant templates in separate processes with hard limits; one per process."""

    def __init__(
        self,
        *,
        settings: Settings,
        secret_key: str,
        clock: Clock | None = None,
        wall_seconds: float | None = None,
    ) -> None:
        """``wall_seconds``: the wall-clock bound of one job (default: from the CPU limit)."""
        self._settings = settings
        #: Makes the variables (the signed links) and renders content without template syntax.
        self._local = Renderer(settings=settings, secret_key=secret_key, clock=clock)
        self._timeout = settings.render_timeout_seconds
        self._wall = wall_seconds or settings.render_timeout_seconds * WALL_FACTOR + WALL_MARGIN
        self._size = settings.render_processes
        self._lock = threading.Lock()
        self._pid: int | None = None  # the process whose threads serve the queue
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    # --- what callers use -----------------------------------------------------------------------

    def check(self, *, subject: str, html: str | None, text: str | None) -> None:
        """Raises ``TemplateSyntaxError`` (naming the part and line) or ``InvalidInput`` when the
        content does not compile; compiling runs in a render process too, within its limits."""
        source = TemplateSource(subject=subject, html=html, text=text)
        if self.renders_here(source):
            self._local.compile(subject=subject, html=html, text=text)
            return
        batch = _Batch(sources=[(subject, html, text)], jobs=[(0, None)])
        reply = self._submit(batch).result()[0]
        if reply[0] != "ok":
            raise self._error(reply)

    def render(
        self,
        source: TemplateSource,
        *,
        tenant_id: int,
        recipient: Recipient,
        data: Mapping[str, Any],
        category: str | None,
    ) -> RenderedContent:
        """One recipient's mail; raises ``RenderError`` (or ``TemplateSyntaxError``) naming the part."""
        job = RenderJob(source, tenant_id, recipient, data, category)
        result = self.render_many([job])[0]
        if isinstance(result, errors.TidingsError):
            raise result
        return result

    def render_many(self, jobs: Sequence[RenderJob]) -> list[RenderResult]:
        """Each job's mail or its error, in order; blocks the calling thread (not the GIL)."""
        results, batch = self._prepare(jobs)
        if batch is not None:
            self._fill(results, self._submit(batch).result())
        return [r for r in results if r is not None]

    async def render_many_async(self, jobs: Sequence[RenderJob]) -> list[RenderResult]:
        """As ``render_many``, awaited: the event loop keeps running meanwhile, no thread waits."""
        results, batch = self._prepare(jobs)
        if batch is not None:
            self._fill(results, await asyncio.wrap_future(self._submit(batch)))
        return [r for r in results if r is not None]

    def start(self) -> None:
        """Start the render processes now rather than at the first render."""
        self._ensure_threads()

    def close(self) -> None:
        """Stop the render processes, each after the batch it is on, and wait for them: none is
        left behind, not even as a zombie. Idempotent; a later render starts them again."""
        with self._lock:
            threads = self._threads if self._pid == os.getpid() else []
            for _ in threads:
                self._queue.put(None)
            self._pid = None
            self._threads = []
        for thread in threads:
            thread.join()

    # --- batches --------------------------------------------------------------------------------

    def renders_here(self, source: TemplateSource) -> bool:
        """True when no part holds template syntax and no text part is to be derived from HTML:
        then the ``Renderer`` only copies text (see ``renderer._literal``), nothing to bound."""
        parts = (source.subject, source.html, source.text)
        if any(part and "{" in part for part in parts):
            return False
        return not (source.html and source.html.strip()) or bool(
            source.text and source.text.strip()
        )

    def _prepare(
        self, jobs: Sequence[RenderJob]
    ) -> tuple[list[RenderResult | None], _Batch | None]:
        results: list[RenderResult | None] = [None] * len(jobs)
        # Per distinct source, once a batch (a campaign's batch has one): the links it prints, and
        # its index among the batch's sources, or None when it renders here.
        plans: dict[TemplateSource, tuple[list[tokens.TokenKind], int | None]] = {}
        ordered: list[child.Source] = []
        work: list[tuple[int, dict[str, Any] | None]] = []
        for position, job in enumerate(jobs):
            source = job.source
            plan = plans.get(source)
            if plan is None:
                index = None if self.renders_here(source) else len(ordered)
                if index is not None:
                    ordered.append((source.subject, source.html, source.text))
                links = wanted_links(source.subject, source.html, source.text)
                plan = plans[source] = (links, index)
            links, index = plan
            variables = self._local.variables(
                links=links,
                tenant_id=job.tenant_id,
                recipient=job.recipient,
                data=job.data,
                category=job.category,
            )
            if index is None:
                results[position] = self._render_here(source, variables)
            else:
                work.append((index, variables))
        if not work:
            return results, None
        return results, _Batch(sources=ordered, jobs=work)

    def _render_here(self, source: TemplateSource, variables: dict[str, Any]) -> RenderResult:
        try:
            compiled = self._local.compile(
                subject=source.subject, html=source.html, text=source.text
            )
            return self._local.render_variables(compiled, variables)
        except errors.TidingsError as exc:
            return exc

    def _fill(self, results: list[RenderResult | None], replies: list[child.Reply]) -> None:
        answers = iter(replies)
        for position, result in enumerate(results):
            if result is None:
                results[position] = self._result(next(answers))

    @staticmethod
    def _result(reply: child.Reply) -> RenderResult:
        if reply[0] == "ok":
            return RenderedContent(subject=reply[1], html=reply[2], text=reply[3])
        return RenderPool._error(reply)

    @staticmethod
    def _error(reply: child.Reply) -> errors.TidingsError:
        _, kind, message, part, line = reply
        if kind == "syntax":
            return errors.TemplateSyntaxError(message, field=part, line=line)
        if kind == "invalid":
            return errors.InvalidInput(message, field=part)
        if kind == "exhausted":
            return ResourceExhausted(message, field=part)
        return errors.RenderError(message, field=part)

    def _submit(self, batch: _Batch) -> Future[list[child.Reply]]:
        self._ensure_threads()
        self._queue.put(batch)
        return batch.future

    def _ensure_threads(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # First use, or a process forked from the one that started the threads: they did not
            # come along, and the queue may hold the other process's batches.
            self._pid = os.getpid()
            self._queue = queue.SimpleQueue()
            self._threads = [
                threading.Thread(
                    target=self._serve, args=(self._queue,), name=f"tidings-render-{n}", daemon=True
                )
                for n in range(self._size)
            ]
            for thread in self._threads:
                thread.start()

    # --- one pool thread ------------------------------------------------------------------------

    def _serve(self, batches: queue.SimpleQueue[_Batch | None]) -> None:
        """Feed one render process with batches until the pool closes."""
        process: RenderProcess | None = None
        while True:
            if process is None:
                try:
                    process = RenderProcess(self._settings)
                except Exception:
                    log.exception("could not start a render process")
            batch = batches.get()
            if batch is None:
                break
            if not batch.future.set_running_or_notify_cancel():
                continue  # its caller gave up waiting (a cancelled task)
            try:
                replies, process = self._run(process, batch)
            except BaseException as exc:
                batch.future.set_exception(exc)
                if process is not None:
                    process.kill()
                process = None
            else:
                batch.future.set_result(replies)
        if process is not None:
            process.stop()

    def _run(
        self, process: RenderProcess | None, batch: _Batch
    ) -> tuple[list[child.Reply], RenderProcess | None]:
        """Every job's reply; a job that breaks a limit gets an error, the rest go on."""
        replies: list[child.Reply | None] = [None] * len(batch.jobs)
        todo = list(range(len(batch.jobs)))
        while todo:
            if process is None:
                process = RenderProcess(self._settings)
            request = [batch.jobs[i] for i in todo]
            try:
                process.send(batch.sources, request)
            except OSError:  # it died while idle (killed from outside): a fresh one takes over
                process.kill()
                process = RenderProcess(self._settings)
                process.send(batch.sources, request)
            answered = 0  # replies received for this request, in order
            while True:
                # Replies come in lists (``child.REPLY_CHUNK``) no later than ``FLUSH_SECONDS``
                # after the job before, so the wall-clock bound of one job holds for each wait.
                message = process.receive(self._wall)
                if isinstance(message, list):
                    for reply in message:
                        replies[todo[answered]] = reply
                        answered += 1
                    continue
                if message is None:  # too slow, or died: the job it was on fails alone
                    culprit = max(process.position, answered)
                    if culprit < len(todo):
                        replies[todo[culprit]] = self._lost(process)
                    process.kill()
                    process = None
                    # Jobs done but not yet reported when it stopped are rendered again.
                    todo = todo[answered:culprit] + todo[culprit + 1 :]
                    break
                retire = bool(message[1])  # ("done", retire): after the batch or a hard limit
                todo = todo[answered:]
                if retire:
                    process.stop()
                    process = None
                break
        return [r for r in replies if r is not None], process

    def _lost(self, process: RenderProcess) -> child.Reply:
        """The reply for a job whose process was killed (too slow) or died (out of memory)."""
        part = process.part
        if process.alive():
            message = f"rendering took longer than the time limit ({self._timeout:g} s)"
        else:
            megabytes = self._settings.render_max_bytes / (1024 * 1024)
            message = (
                "rendering stopped: the template went over the memory limit "
                f"({megabytes:g} MB) or crashed"
            )
        log.warning("render process %s replaced: %s (%s)", process.pid, message, part)
        return ("error", "exhausted", message, part, None)
