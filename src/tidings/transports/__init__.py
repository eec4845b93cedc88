"""Transports deliver rendered messages: SMTP, Resend's HTTP API, a maildir outbox, or memory.

``open_transport(TIDINGS_TRANSPORT_URL)`` picks one; every transport speaks ``Transport.send(batch)
-> [Sent | Transient | Permanent]`` and translates its library's errors at this edge.
"""

from tidings.transports.base import Transport, open_transport

__all__ = ["Transport", "open_transport"]
