"""An in-process sliding-window rate limit, for the public link pages (``/u``, ``/p``).

Those pages take no key: whoever holds a link can unsubscribe and subscribe again as often as
they like, and anyone can hammer the routes with made-up tokens. The limit bounds both, per token
(the flapping of one recipient's state, the work spent on one link) and per client address (a
client trying many tokens). A recipient clicking, confirming and saving a few choices stays far
below it.

The window is kept in this process's memory, so it bounds what *one process* lets through: with
``tidings serve --processes N`` (or several hosts behind a load balancer) requests spread over N
processes, and a client can get up to N times the limit through in one window. That is still a
bound, and the one-click unsubscribe stays cheap and idempotent; a shared limit would cost a
database write on every hit of a public link. The client address is the connection's peer, or
the ``X-Forwarded-For`` of a proxy uvicorn trusts (127.0.0.1 unless ``FORWARDED_ALLOW_IPS`` says
otherwise): behind a proxy on another host, set it, or every client counts as the proxy.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``requests`` in any ``window_seconds``."""

    requests: int
    window_seconds: float


#: One link: open it, confirm, visit the preferences, save a few times, with room for the link
#: scanners of mailbox providers that fetch it first.
PER_TOKEN = Limit(requests=20, window_seconds=600.0)
#: One client address, over every link it tries.
PER_CLIENT = Limit(requests=120, window_seconds=60.0)
#: Public sign-up forms (``/s/{public_id}``): sign-ups from one client address (an office behind
#: one address signs up a few people), and confirmation mails to one address (``api/routes/signup``).
SIGNUP_PER_CLIENT = Limit(requests=10, window_seconds=600.0)
SIGNUP_PER_EMAIL = Limit(requests=3, window_seconds=3600.0)
#: Keys remembered at most; the least recently used are forgotten first, so memory stays bounded
#: however many made-up tokens arrive (a forgotten key only starts a fresh window).
MAX_KEYS = 50_000


class RateLimiter:
    """Sliding windows per key (``(kind, value)``), safe to share between threads."""

    def __init__(
        self,
        limits: dict[str, Limit],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._max_keys = max_keys
        self._hits: OrderedDict[tuple[str, Hashable], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, keys: dict[str, Hashable]) -> float | None:
        """Count one request for every ``kind -> value`` in ``keys``; None when it may go on,
        else the seconds until it may (for ``Retry-After``).

        A refused request is not counted, so a client that keeps retrying too early is refused
        only until its window has room again.
        """
        now = self._clock()
        with self._lock:
            wait = 0.0
            windows = []
            for kind, value in keys.items():
                limit = self._limits[kind]
                key = (kind, value)
                hits = self._hits.get(key)
                if hits is None:
                    hits = self._hits[key] = deque()
                else:
                    self._hits.move_to_end(key)
                while hits and hits[0] <= now - limit.window_seconds:
                    hits.popleft()
                if len(hits) >= limit.requests:
                    wait = max(wait, hits[0] + limit.window_seconds - now)
                windows.append(hits)
            if wait > 0:
                return wait
            for hits in windows:
                hits.append(now)
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
            return None


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
