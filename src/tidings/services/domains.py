"""A tenant's sender domains: their DKIM keys, the DNS records to publish, and verification.

A domain starts ``pending`` with a new key and selector; ``verify`` looks its records up and
makes it ``verified`` (its mail is DKIM-signed from then on) or ``failed`` with the reason.

Rotation (``rotate_domain``) makes a new key and selector and keeps the old key until the next
rotation, so that mail signed with it and still in flight keeps verifying (its record must stay
published until then; ``dns_records`` lists it). The domain is ``pending`` again until the new
record verifies, and meanwhile mail is still signed with the old key if that one was verified:
signing never stops because a rotation has begun. Rotating again before the new key verified
drops that unverified key, never the verified one.

Verification runs DNS lookups, which may take seconds: they happen outside any transaction (on
SQLite a transaction holds the write lock), between ``verification_target`` and
``record_verification``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import dkim
import dns.exception
import dns.resolver
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings import sealing
from tidings.db.models import SenderDomain
from tidings.domain.addresses import covering_domains
from tidings.domain.message import DkimKey, OutgoingMessage
from tidings.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from tidings.services.pagination import Page, paginate
from tidings.transports import dkim_sign
from tidings.transports.mime import build_message_bytes

PENDING, VERIFIED, FAILED = "pending", "verified", "failed"
MAX_DOMAIN_LENGTH = 253  # octets of a DNS name without its trailing dot (RFC 1035)
MAX_LABEL_LENGTH = 63
DNS_TIMEOUT = 2.0  # seconds per try of one lookup
DNS_LIFETIME = 4.0  # seconds for one lookup in all (retries included)
DNS_PORT = 53

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


# -- naming and key material ----------------------------------------------------------------


def normalise_domain(value: str) -> str:
    """The domain as stored: lower-case ASCII (IDNA), one trailing dot dropped; ``InvalidInput``
    (field ``domain``) for a wildcard, an address, a single label, an IP or a malformed name."""
    name = value.strip()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not name or "*" in name or "@" in name or any(c.isspace() for c in name):
        raise InvalidInput(
            "domain must be a domain name such as mail.example.com (no wildcard, no address)",
            field="domain",
        )
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidInput(f"domain {value!r} is not a valid domain name", field="domain") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > MAX_DOMAIN_LENGTH or len(labels) < 2:
        raise InvalidInput(
            f"domain must have at least two labels and at most {MAX_DOMAIN_LENGTH} characters",
            field="domain",
        )
    for label in labels:
        if len(label) > MAX_LABEL_LENGTH or not _LABEL.fullmatch(label):
            raise InvalidInput(
                f"domain label {label!r} is not valid (letters, digits, inner hyphens; at most"
                f" {MAX_LABEL_LENGTH})",
                field="domain",
            )
    if labels[-1].isdigit():
        raise InvalidInput("domain must be a name, not an IP address", field="domain")
    return ascii_name


def check_algorithm(algorithm: str) -> str:
    if algorithm not in dkim_sign.ALGORITHMS:
        raise InvalidInput(
            f"algorithm must be one of {', '.join(dkim_sign.ALGORITHMS)}", field="algorithm"
        )
    return algorithm


def _new_selector(now: datetime) -> str:
    """Dated, so an operator sees which key is which; random, so two rotations a day differ."""
    return f"td{now:%Y%m%d}{secrets.token_hex(2)}"


def _new_key(
    tenant_id: int, domain: str, algorithm: str, secret_key: str
) -> tuple[str, str]:  # (sealed private PEM, public p=)
    key = dkim_sign.generate_key(algorithm)
    sealed = sealing.seal(
        secret_key, dkim_sign.private_pem(key), purpose=dkim_sign.seal_purpose(tenant_id, domain)
    )
    return sealed, dkim_sign.public_key_value(key)


# -- the records to publish -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsRecord:
    purpose: str  # dkim | dkim-previous | spf | dmarc
    type: str
    name: str
    value: str
    strings: list[str]  # the value as the TXT record's character-strings (<= 255 octets each)
    required: bool  # DKIM must match for signing; SPF and DMARC are advice
    note: str


def dns_records(domain: SenderDomain, *, spf_include: str | None) -> list[DnsRecord]:
    """What to publish: the DKIM key (and the previous one, until the next rotation), an SPF
    record and a DMARC policy to start from."""
    records = [_dkim_record(domain.domain, domain.selector, domain.algorithm, domain.public_key)]
    if domain.previous_selector and domain.previous_public_key and domain.previous_algorithm:
        previous = _dkim_record(
            domain.domain,
            domain.previous_selector,
            domain.previous_algorithm,
            domain.previous_public_key,
        )
        records.append(
            DnsRecord(
                **{
                    **record_fields(previous),
                    "purpose": "dkim-previous",
                    "note": "the previous key: keep it published until the next rotation, so "
                    "that mail signed with it still verifies",
                }
            )
        )
    spf = f"v=spf1 include:{spf_include} ~all" if spf_include else "v=spf1 mx ~all"
    records.append(
        DnsRecord(
            purpose="spf",
            type="TXT",
            name=domain.domain,
            value=spf,
            strings=dkim_sign.txt_strings(spf),
            required=False,
            note="suggested: merge it into an existing v=spf1 record (a name may have only one),"
            " and include your relay's SPF domain",
        )
    )
    dmarc = f"v=DMARC1; p=none; adkim=r; aspf=r; rua=mailto:dmarc-reports@{domain.domain}"
    records.append(
        DnsRecord(
            purpose="dmarc",
            type="TXT",
            name=f"_dmarc.{domain.domain}",
            value=dmarc,
            strings=dkim_sign.txt_strings(dmarc),
            required=False,
            note="suggested: start with p=none and read the reports, then move to quarantine",
        )
    )
    return records


def _dkim_record(domain: str, selector: str, algorithm: str, public_key: str) -> DnsRecord:
    value = dkim_sign.txt_record_value(algorithm, public_key)
    return DnsRecord(
        purpose="dkim",
        type="TXT",
        name=f"{selector}._domainkey.{domain}",
        value=value,
        strings=dkim_sign.txt_strings(value),
        required=True,
        note="publish as one TXT record; DNS providers that ask for one string take the value "
        "whole, others the strings",
    )


def record_fields(record: DnsRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in DnsRecord.__slots__}


# -- the use cases ----------------------------------------------------------------------------


def create_domain(
    *,
    session: Session,
    tenant_id: int,
    domain: str,
    algorithm: str,
    secret_key: str,
    now: datetime,
) -> SenderDomain:
    """A pending sender domain with a new key; ``Conflict`` when the tenant has it already."""
    name = normalise_domain(domain)
    check_algorithm(algorithm)
    existing = session.scalar(
        select(SenderDomain.id).where(
            SenderDomain.tenant_id == tenant_id, SenderDomain.domain == name
        )
    )
    if existing is not None:
        raise Conflict(f"{name} is already a sender domain of this tenant", field="domain")
    sealed, public = _new_key(tenant_id, name, algorithm, secret_key)
    row = SenderDomain(
        tenant_id=tenant_id,
        domain=name,
        algorithm=algorithm,
        selector=_new_selector(now),
        private_key=sealed,
        public_key=public,
        status=PENDING,
        previous_verified=False,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_domain(*, session: Session, tenant_id: int, domain_id: int) -> SenderDomain:
    row = session.scalar(
        select(SenderDomain).where(
            SenderDomain.tenant_id == tenant_id, SenderDomain.id == domain_id
        )
    )
    if row is None:
        raise NotFound("no such sender domain")
    return row


def list_domains(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[SenderDomain]:
    query = select(SenderDomain).where(SenderDomain.tenant_id == tenant_id)
    return paginate(session, query, SenderDomain.id, limit=limit, cursor=cursor)


def delete_domain(*, session: Session, tenant_id: int, domain_id: int) -> None:
    """Its mail is unsigned from the workers' next key refresh on (at most a minute)."""
    session.delete(get_domain(session=session, tenant_id=tenant_id, domain_id=domain_id))
    session.flush()


def rotate_domain(
    *,
    session: Session,
    tenant_id: int,
    domain_id: int,
    algorithm: str | None,
    secret_key: str,
    now: datetime,
) -> SenderDomain:
    """A new key and selector, pending; the old key kept as ``previous`` (see the module)."""
    row = get_domain(session=session, tenant_id=tenant_id, domain_id=domain_id)
    new_algorithm = check_algorithm(algorithm or row.algorithm)
    if row.status == VERIFIED:
        row.previous_selector = row.selector
        row.previous_algorithm = row.algorithm
        row.previous_private_key = row.private_key
        row.previous_public_key = row.public_key
        row.previous_verified = True
    # else the current key never verified: it is dropped, the previous one (if any) stays.
    row.private_key, row.public_key = _new_key(tenant_id, row.domain, new_algorithm, secret_key)
    row.algorithm = new_algorithm
    row.selector = _new_selector(now)
    row.status = PENDING
    row.reason = None
    row.rotated_at = now
    session.flush()
    return row


def signs_mail(row: SenderDomain) -> bool:
    """Whether mail from this domain is DKIM-signed now: its key is verified, or a rotation is
    under way and the previous key was."""
    return row.status == VERIFIED or bool(row.previous_verified and row.previous_private_key)


def require_verified_sender(
    *, session: Session, tenant_id: int, from_address: str, field: str
) -> None:
    """``InvalidInput`` on ``field`` unless a sender domain of the tenant that signs mail covers
    the From's domain (TIDINGS_REQUIRE_VERIFIED_FROM)."""
    names = covering_domains(from_address)
    rows = (
        session.scalars(
            select(SenderDomain).where(
                SenderDomain.tenant_id == tenant_id, SenderDomain.domain.in_(names)
            )
        ).all()
        if names
        else []
    )
    if not any(signs_mail(row) for row in rows):
        domain = names[0] if names else from_address
        raise InvalidInput(
            f"the From domain {domain} is not a verified sender domain of this tenant "
            "(TIDINGS_REQUIRE_VERIFIED_FROM is on): add it with POST /v1/domains and verify it",
            field=field,
        )


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationTarget:
    """What a verification looks up, read before the lookups (outside any transaction)."""

    domain_id: int
    tenant_id: int
    domain: str
    selector: str
    algorithm: str
    public_key: str
    sealed_private_key: str


@dataclass(frozen=True, slots=True)
class Findings:
    verified: bool
    reason: str | None  # why not
    advice: list[str] = field(default_factory=list)  # SPF and DMARC: never fail a domain


TxtLookup = Callable[[str], list[str] | None]  # name -> its TXT records (joined), None: none


def verification_target(*, session: Session, tenant_id: int, domain_id: int) -> VerificationTarget:
    row = get_domain(session=session, tenant_id=tenant_id, domain_id=domain_id)
    return VerificationTarget(
        domain_id=row.id,
        tenant_id=row.tenant_id,
        domain=row.domain,
        selector=row.selector,
        algorithm=row.algorithm,
        public_key=row.public_key,
        sealed_private_key=row.private_key,
    )


def resolver_lookup(resolver_address: str | None) -> TxtLookup:
    """TXT lookups through ``TIDINGS_DNS_RESOLVER`` (``host:port``, ``host``, ``[v6]:port``) or the
    system's resolver, with short timeouts. A timeout or a server failure raises ``LookupFailed``."""
    if resolver_address:
        host, port = _host_port(resolver_address)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = DNS_TIMEOUT
    resolver.lifetime = DNS_LIFETIME

    def lookup(name: str) -> list[str] | None:
        try:
            answer = resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise LookupFailed(f"the DNS lookup of {name} failed: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"the DNS lookup of {name} failed: {exc}") from exc
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    return lookup


class LookupFailed(Exception):
    """A lookup that could not be answered (timeout, server failure): not a missing record."""


def _host_port(address: str) -> tuple[str, int]:
    text = address.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text)
    if not host:
        raise ConfigurationError(
            "TIDINGS_DNS_RESOLVER must be host:port", field="TIDINGS_DNS_RESOLVER"
        )
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigurationError(
            "TIDINGS_DNS_RESOLVER must be host:port", field="TIDINGS_DNS_RESOLVER"
        )
    return int(text)


def check_dns(target: VerificationTarget, *, lookup: TxtLookup, secret_key: str) -> Findings:
    """Is the DKIM record published as we gave it, and does a real verifier (dkimpy) accept a
    message signed with the stored key against it? SPF and DMARC are looked up as advice."""
    name = f"{target.selector}._domainkey.{target.domain}"
    try:
        found = lookup(name)
        reason = _dkim_problem(target, name, found)
        if reason is None and found is not None:
            reason = _verifier_problem(target, found, secret_key)
        advice = _advice(target.domain, lookup)
    except LookupFailed as exc:
        return Findings(verified=False, reason=str(exc))
    return Findings(verified=reason is None, reason=reason, advice=advice)


def _dkim_problem(target: VerificationTarget, name: str, found: list[str] | None) -> str | None:
    records = [r for r in found or [] if "p=" in r]
    if not records:
        return f"no TXT record at {name}"
    if len(records) > 1:
        return f"more than one DKIM record at {name}: keep only one"
    tags = _tags(records[0])
    if tags.get("v", "DKIM1") != "DKIM1":
        return f"the record at {name} is not a DKIM1 record"
    if not tags.get("p"):
        return f"the key at {name} is revoked (empty p=)"
    wanted_k = "ed25519" if target.algorithm == dkim_sign.ED25519 else "rsa"
    if tags.get("k", "rsa") != wanted_k:
        return f"the record at {name} has k={tags.get('k', 'rsa')}, this key is {wanted_k}"
    if re.sub(r"\s+", "", tags["p"]) != target.public_key:
        return f"the published key at {name} does not match this domain's key"
    return None


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        key, equals, value = part.partition("=")
        if equals:
            tags[key.strip()] = value.strip()
    return tags


def _verifier_problem(target: VerificationTarget, found: list[str], secret_key: str) -> str | None:
    """Sign a probe message with the stored key and let dkimpy verify it against ``found``."""
    try:
        pem = sealing.unseal(
            secret_key,
            target.sealed_private_key,
            purpose=dkim_sign.seal_purpose(target.tenant_id, target.domain),
        )
        key = DkimKey(
            target.domain, target.selector, target.algorithm, dkim_sign.load_private_pem(pem)
        )
    except (ConfigurationError, ValueError) as exc:
        return f"the stored key cannot be used ({exc}); rotate the key"
    probe = OutgoingMessage(
        message_id=0,
        tenant_id=target.tenant_id,
        from_address=f"dkim-check@{target.domain}",
        to_address=f"dkim-check@{target.domain}",
        subject="DKIM check",
        html=None,
        text="A message signed to check the published DKIM key.",
        message_id_header=f"<dkim-check@{target.domain}>",
        dkim=key,
    )
    record = "".join(r for r in found if "p=" in r).encode()
    wanted = f"{target.selector}._domainkey.{target.domain}."

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:  # noqa: ARG001
        text = name.decode() if isinstance(name, bytes) else name
        return record if text.rstrip(".") + "." == wanted else None

    try:
        accepted = dkim.verify(build_message_bytes(probe), dnsfunc=dnsfunc)
    except Exception as exc:  # dkimpy raises for records it cannot parse
        return f"a DKIM verifier cannot use the published record: {exc}"
    return None if accepted else "a signature made with this key does not verify against the record"


def _advice(domain: str, lookup: TxtLookup) -> list[str]:
    spf = [r for r in lookup(domain) or [] if r.lower().startswith("v=spf1")]
    advice = [
        f"SPF record found: {spf[0]}"
        if len(spf) == 1
        else "more than one SPF record: receivers treat that as an error; merge them"
        if spf
        else f"no SPF record at {domain}: publish the suggested one"
    ]
    dmarc = None
    for name in covering_domains(f"x@{domain}"):
        dmarc = [r for r in lookup(f"_dmarc.{name}") or [] if r.startswith("v=DMARC1")]
        if dmarc:
            advice.append(f"DMARC policy found at _dmarc.{name}: {dmarc[0]}")
            break
    if not dmarc:
        advice.append(f"no DMARC policy for {domain}: publish the suggested one")
    return advice


def record_verification(
    *,
    session: Session,
    target: VerificationTarget,
    findings: Findings,
    now: datetime,
) -> SenderDomain:
    """Write what the lookups found, unless the key changed meanwhile (a rotation or a deletion
    between the lookups and now): then the answer is about a key that is gone, and is dropped."""
    row = get_domain(session=session, tenant_id=target.tenant_id, domain_id=target.domain_id)
    if row.selector != target.selector:
        return row
    row.checked_at = now
    if findings.verified:
        row.status = VERIFIED
        row.reason = None
        row.verified_at = now
    else:
        row.status = FAILED
        row.reason = findings.reason
    session.flush()
    return row


async def verify(
    *,
    sessions: Callable[[], Session],
    session: Session,
    tenant_id: int,
    domain_id: int,
    resolver_address: str | None,
    secret_key: str,
    now: datetime,
) -> tuple[SenderDomain, Findings]:
    """Look the domain's records up and record what was found, in ``session``. The domain is
    read in a short transaction of its own (``sessions``), and the lookups run in a thread
    outside any transaction: on SQLite every transaction holds the write lock, and a lookup may
    take seconds."""

    def target() -> VerificationTarget:
        with sessions() as own, own.begin():
            return verification_target(session=own, tenant_id=tenant_id, domain_id=domain_id)

    found = await asyncio.to_thread(target)
    findings = await asyncio.to_thread(
        check_dns, found, lookup=resolver_lookup(resolver_address), secret_key=secret_key
    )
    row = await asyncio.to_thread(
        record_verification, session=session, target=found, findings=findings, now=now
    )
    return row, findings


def domains_of(*, session: Session, tenant_id: int) -> Sequence[SenderDomain]:
    """Every sender domain of the tenant (the dashboard shows them all; a tenant has a few)."""
    return session.scalars(
        select(SenderDomain)
        .where(SenderDomain.tenant_id == tenant_id)
        .order_by(SenderDomain.domain)
    ).all()
