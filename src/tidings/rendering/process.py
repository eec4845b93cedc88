"""``RenderProcess``: the parent's handle on one render process (``child.py``), as the pool's
threads drive it."""

from __future__ import annotations

import contextlib
import mmap
import socket
import struct
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from typing import Any

from tidings.config import Settings
from tidings.rendering.child import PARTS, STATE_SIZE, Limits, Reply, Source
from tidings.rendering.renderer import Part

START_SECONDS = 60.0  # a new render process must be ready within this (a loaded machine)
STOP_SECONDS = 2.0  # a render process asked to exit gets this long before it is killed


class RenderProcess:
    """One render process and the socket to it; used by one pool thread only.

    Started with ``subprocess`` (fork and exec at once, safe in a process with threads), not with
    ``multiprocessing``: its ``spawn`` and ``forkserver`` methods import the parent's main module
    again in every child (the whole CLI and API), which makes each child slower to start and
    larger, and runs a script's top level once more.
    """

    def __init__(self, settings: Settings) -> None:
        ours, theirs = socket.socketpair()
        # Shared memory: the part and the job the process is on, readable here even after killing
        # it (``child.STATE_SIZE``).
        self._part_file = tempfile.TemporaryFile()
        self._part_file.write(bytes(STATE_SIZE))
        self._part_file.flush()
        self._part = mmap.mmap(self._part_file.fileno(), STATE_SIZE)
        with theirs:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tidings.rendering.child",
                    str(theirs.fileno()),
                    str(self._part_file.fileno()),
                ],
                pass_fds=(theirs.fileno(), self._part_file.fileno()),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C is for this process, which stops it
            )
        self._connection = Connection(ours.detach())
        self._connection.send(
            Limits(
                render_timeout_seconds=settings.render_timeout_seconds,
                render_max_bytes=settings.render_max_bytes,
                render_max_output_bytes=settings.render_max_output_bytes,
            )
        )
        if self.receive(START_SECONDS) is None:  # ("ready", pid)
            self.kill()
            raise RuntimeError("a render process did not start")

    @property
    def part(self) -> Part:
        return PARTS[self._part[0]] if self._part[0] < len(PARTS) else "html"

    @property
    def position(self) -> int:
        """The position in its current batch of the job the process is on (or was, if dead)."""
        position: int = struct.unpack_from("<I", self._part, 1)[0]
        return position

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, sources: list[Source], jobs: list[tuple[int, dict[str, Any] | None]]) -> None:
        struct.pack_into("<I", self._part, 1, 0)  # no job of this batch started yet
        self._connection.send((sources, jobs))

    def receive(self, seconds: float) -> list[Reply] | Reply | None:
        """The next message: a list of replies, or ``("done", retire)`` (or ``("ready", pid)``);
        None when none came in ``seconds`` or the process is gone."""
        try:
            if self._connection.poll(seconds):
                message: list[Reply] | Reply = self._connection.recv()
                return message
        except (EOFError, OSError):
            pass
        return None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._connection.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_SECONDS)
        self.kill()

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()  # reaped: no zombie
        self._connection.close()
        self._part.close()
        self._part_file.close()
