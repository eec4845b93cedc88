"""Which transport URLs a tenant may register, and the guard against pointing us at our own network.

A tenant's URL is checked by the factory's own parsers, then against what a tenant must not choose:

- ``memory://`` (a test fake) and, unless private targets are allowed, ``resend+http://`` (an API
  key in clear text, a test stand-in);
- an outbox anywhere but the tenant's own directory under the data directory
  (``<data dir>/tenant-outboxes/<tenant id>``): the path is the tenant's choice and the process
  writes there, so anywhere else would let a tenant write files wherever we can;
- SMTP ``cafile`` (a path on our disk we would read) and timeouts longer than ours;
- a host that resolves to a loopback, private, link-local or otherwise non-public address (the
  webhooks' SSRF rules, ``webhook_targets.is_public``), unless ``TIDINGS_TRANSPORT_ALLOW_PRIVATE``:
  an SMTP client aimed at 127.0.0.1:6379 or the cloud metadata service is a request forgery like any
  other, and its error messages would map our network. ``TIDINGS_TRANSPORT_ALLOWED_HOSTS`` narrows
  it further to named relays.

The host is checked when the transport is registered or tested, and again each time a worker opens
it (``guard``). A name that changes what it resolves to between that check and a later reconnect
of the connection pool is not caught (DNS rebinding); ``TIDINGS_TRANSPORT_ALLOWED_HOSTS`` closes
that for operators who need it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from tidings import webhook_targets
from tidings.errors import ConfigurationError, InvalidInput
from tidings.transports.base import ENV_NAME, RESEND_HOST, SMTP_DATA_TIMEOUT, SMTP_TIMEOUT
from tidings.transports.factory import parse_outbox_url, parse_resend_url, parse_smtp_url

MAX_URL_LENGTH = 2000  # characters
TENANT_SCHEMES = ("smtp", "smtps", "resend", "resend+http", "outbox")
TENANT_OUTBOXES = "tenant-outboxes"  # under the data directory, one folder per tenant
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")

Resolver = Callable[[str, int], list[webhook_targets.IPAddress]]


@dataclass(frozen=True, slots=True)
class TenantUrlPolicy:
    """What the operator allows tenants (from ``Settings``)."""

    data_dir: Path
    allow_private: bool = False
    allowed_hosts: Sequence[str] = ()


def tenant_outbox(data_dir: Path, tenant_id: int) -> Path:
    """The one directory a tenant's outbox URLs may point into."""
    return (data_dir / TENANT_OUTBOXES / str(tenant_id)).resolve()


def check_tenant_url(
    url: str, *, tenant_id: int, policy: TenantUrlPolicy, resolve: Resolver | None = None
) -> str:
    """``url`` when tenant ``tenant_id`` may send through it; ``InvalidInput`` (field ``url``) with
    the reason otherwise. Never quotes the URL back: it holds a password or an API key."""
    if not url or len(url) > MAX_URL_LENGTH or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise _bad(f"url must be 1 to {MAX_URL_LENGTH} characters, with no spaces")
    scheme = url.partition(":")[0].lower()
    if scheme not in TENANT_SCHEMES or (scheme == "resend+http" and not policy.allow_private):
        allowed = [s for s in TENANT_SCHEMES if s != "resend+http" or policy.allow_private]
        raise _bad(f"use one of {', '.join(s + '://' for s in allowed)}")
    try:
        if scheme == "outbox":
            _check_outbox(parse_outbox_url(url), tenant_id=tenant_id, policy=policy)
            return url
        if scheme.startswith("resend"):
            base = parse_resend_url(url).base_url
            target = urlsplit(base)
            host, port = target.hostname or RESEND_HOST, target.port or 443
        else:
            smtp = parse_smtp_url(url)
            _check_smtp_options(url)
            host, port = smtp.host, smtp.port
    except ConfigurationError as exc:
        raise _bad(exc.message.removeprefix(f"{ENV_NAME} is not valid: ")) from None
    check_host(host, port, policy=policy, resolve=resolve or _resolve)
    return url


def check_host(host: str, port: int, *, policy: TenantUrlPolicy, resolve: Resolver) -> None:
    host = host.rstrip(".").lower()
    if policy.allowed_hosts and not any(_matches(host, p) for p in policy.allowed_hosts):
        raise _bad(f"{host} is not one of the relays this service allows")
    if policy.allow_private:
        return
    addresses = resolve(host, port)
    if not addresses:
        raise _bad(f"{host} does not resolve to any address")
    if not all(webhook_targets.is_public(a) for a in addresses):
        # The address is not named: the tenant would learn what our internal names point at.
        raise _bad(f"{host} is not allowed: a tenant's transport must be on a public address")


async def guard(url: str, *, policy: TenantUrlPolicy) -> None:
    """The host check again, before a worker opens the transport (its address may have changed)."""
    scheme = url.partition(":")[0].lower()
    if scheme == "outbox":
        return  # the path was checked on registration, and a tenant cannot change our disk
    await asyncio.to_thread(check_tenant_url, url, tenant_id=0, policy=policy)


def _check_outbox(path: Path, *, tenant_id: int, policy: TenantUrlPolicy) -> None:
    home = tenant_outbox(policy.data_dir, tenant_id)
    resolved = path.resolve()
    if resolved != home and home not in resolved.parents:
        raise _bad(f"a tenant's outbox must be inside {home}")


def _check_smtp_options(url: str) -> None:
    options = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    if "cafile" in options:
        raise _bad("cafile is not available to tenants (it names a file on this server)")
    helo = options.get("helo")
    if helo is not None and not _HOSTNAME.fullmatch(helo):
        raise _bad("helo must be a host name")
    for name, longest in (("timeout", SMTP_TIMEOUT * 4), ("data_timeout", SMTP_DATA_TIMEOUT)):
        if name in options and float(options[name]) > longest:  # parse_smtp_url checked the form
            raise _bad(f"{name} may be at most {longest:g} seconds")


def _matches(host: str, pattern: str) -> bool:
    pattern = pattern.strip().lower().rstrip(".")
    if pattern.startswith("."):
        return host == pattern[1:] or host.endswith(pattern)
    return host == pattern


def _resolve(host: str, port: int) -> list[webhook_targets.IPAddress]:
    target = webhook_targets.Target(
        url=f"smtp://{host}:{port}", scheme="smtp", host=host, port=port, host_header=host
    )
    try:
        return webhook_targets.resolve(target)
    except InvalidInput as exc:
        raise _bad(exc.message) from None


def _bad(detail: str) -> InvalidInput:
    return InvalidInput(f"url is not valid: {detail}", field="url")
