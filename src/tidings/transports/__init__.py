"""Transports deliver rendered messages: SMTP, Resend's HTTP API, a maildir outbox, or memory.

``factory.open_transport(TIDINGS_TRANSPORT_URL)`` picks one; every transport speaks
``Transport.send(batch) -> [Sent | Transient | Permanent]`` (``base.py``) and translates its
library's errors at this edge. The package imports nothing itself, so that loading the port does
not load every transport's library.
"""
