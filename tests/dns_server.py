"""A real DNS server for tests (dnslib, UDP and TCP, in threads, on 127.0.0.1 and a free port).

It serves TXT records a test publishes, as an operator would at their DNS provider::

    with DnsTestServer() as dns:                      # or the ``dns_server`` fixture
        dns.publish("td1._domainkey.mail.example.com", ["v=DKIM1; k=rsa; p=MIIB...", "..."])
        settings = make_settings(..., dns_resolver=dns.address)   # "127.0.0.1:PORT"

A name with no records answers NXDOMAIN. ``queries`` lists the names asked, in order. A record's
strings are served as separate character-strings (a 2048-bit RSA key does not fit in one), so the
client must join them as a real resolver answer requires. Long answers go over TCP: the server
sets TC on UDP answers over 512 octets, as real servers do.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence

import pytest
from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer


class _Records(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.records: dict[str, list[list[str]]] = {}
        self.queries: list[str] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries.append(name)
            found = [list(r) for r in self.records.get(name, [])]
        if not found:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype in (QTYPE.TXT, QTYPE.ANY):
            for strings in found:
                reply.add_answer(
                    RR(request.q.qname, QTYPE.TXT, ttl=60, rdata=TXT([s.encode() for s in strings]))
                )
        return reply


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


class DnsTestServer:
    def __init__(self) -> None:
        self._records = _Records()
        self.port = _free_port()
        self._servers = [
            DNSServer(self._records, address="127.0.0.1", port=self.port, tcp=tcp, logger=_Quiet())
            for tcp in (False, True)
        ]

    @property
    def address(self) -> str:
        """What ``TIDINGS_DNS_RESOLVER`` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def queries(self) -> list[str]:
        with self._records.lock:
            return list(self._records.queries)

    def publish(self, name: str, *records: Sequence[str] | str) -> None:
        """Add TXT records at ``name``: each a string or a list of character-strings."""
        with self._records.lock:
            entries = self._records.records.setdefault(name.rstrip(".").lower(), [])
            entries.extend([r] if isinstance(r, str) else list(r) for r in records)

    def remove(self, name: str) -> None:
        with self._records.lock:
            self._records.records.pop(name.rstrip(".").lower(), None)

    def txt(self, name: bytes | str, timeout: float = 5.0) -> bytes | None:
        """dkimpy's ``dnsfunc``: the TXT record at ``name``, joined, asked of this server over the
        network (dnspython), as a receiving mail server would."""
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = timeout
        text = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(text, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    def start(self) -> DnsTestServer:
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class _Quiet:
    """dnslib's logger prints every query; tests need none of it."""

    def __getattr__(self, _name: str) -> object:
        return lambda *args, **kwargs: None


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server
