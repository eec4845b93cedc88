"""Where a tenant's webhooks may go: the guard against server-side request forgery.

A tenant chooses the URL, and our server makes the request, so without a guard a tenant could make
us call our own admin ports, the cloud metadata service (169.254.169.254) or the office network.
A target's host is resolved and every address it resolves to must be a public one; unless the
operator allows private targets (``TIDINGS_WEBHOOK_ALLOW_PRIVATE``), loopback, private, link-local,
shared (CGNAT), multicast, reserved and unspecified addresses are refused, in IPv4 and IPv6, IPv4
wrapped in IPv6 (``::ffff:127.0.0.1``, 6to4, Teredo, NAT64) included.

The check runs when the endpoint is registered and again before every delivery (DNS can change
between the two: "DNS rebinding"); the delivery then connects to the very address that was
checked, so a second lookup cannot swap it (``Target.pinned_url``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tidings.errors import InvalidInput

MAX_URL_LENGTH = 2000  # characters
DEFAULT_PORTS = {"http": 80, "https": 443}
#: NAT64's well-known prefix embeds an IPv4 address in the last 32 bits (RFC 6052).
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    """A webhook URL, split into what the guard checks and what the request needs."""

    url: str
    scheme: str  # http | https
    host: str  # a name or an address, without brackets
    port: int
    host_header: str  # what the Host header says (the name, and the port when not the default)

    def pinned_url(self, address: IPAddress) -> str:
        """The URL with its host replaced by ``address``, which was checked."""
        parts = urlsplit(self.url)
        literal = f"[{address}]" if address.version == 6 else str(address)
        return urlunsplit(
            (parts.scheme, f"{literal}:{self.port}", parts.path or "/", parts.query, "")
        )


def parse_target(url: str) -> Target:
    """Checks the URL's form; raises ``InvalidInput`` (field ``url``) when it cannot be a target."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"url must be 1 to {MAX_URL_LENGTH} characters", field="url")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidInput("url must not contain spaces or control characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url is not valid: {exc}", field="url") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidInput("url must start with https:// or http://", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("url must not hold a user name or password", field="url")
    if parts.fragment:
        raise InvalidInput("url must not have a #fragment", field="url")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidInput("url must name a host", field="url")
    port = port or DEFAULT_PORTS[scheme]
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == DEFAULT_PORTS[scheme] else f"{bracketed}:{port}"
    return Target(url=url, scheme=scheme, host=host, port=port, host_header=host_header)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True for an address anyone on the internet reaches the same way; False for ours and theirs."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def check_addresses(target: Target, addresses: list[IPAddress], *, allow_private: bool) -> None:
    """Raises ``InvalidInput`` unless every address is one we may call.

    The message never names the address a host resolved to: the tenant would otherwise learn
    what our internal names point at (``intranet.corp`` is 10.1.2.3) one registration at a time.
    The operator finds the address with ``resolve`` or in the dispatcher's log.
    """
    if not addresses:
        raise InvalidInput(f"{target.host} does not resolve to any address", field="url")
    if allow_private:
        return
    if not all(is_public(address) for address in addresses):
        raise InvalidInput(
            "url names a host that is not allowed; webhooks may only go to public addresses",
            field="url",
        )


def _addresses(infos: list[tuple[object, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        # The scope of a link-local IPv6 address ("fe80::1%eth0") is not part of the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def resolve(target: Target) -> list[IPAddress]:
    """Every address of the target's host (blocking; for request handlers in a thread)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidInput(f"{target.host} cannot be resolved: {exc}", field="url") from None
    return _addresses(list(infos))


async def resolve_async(target: Target) -> list[IPAddress]:
    """``resolve`` without blocking the event loop."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidInput(f"{target.host} cannot be resolved: {exc}", field="url") from None
    return _addresses(list(infos))
