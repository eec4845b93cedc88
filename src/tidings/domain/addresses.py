"""What counts as a recipient address, and its one stored form.

``email-validator`` is the authority (syntax only, no DNS). It checks about 28,000 addresses a
second on one core, which would make it the slowest step of a bulk import, so plain ASCII
addresses first go through a precompiled pattern that is *stricter* than the library: whatever
it accepts the library accepts too, with the same normalised form (the property test in
``tests/unit/test_import_fast_paths.py`` holds it to that). Anything the pattern does not take, or any
case the library treats specially, goes to the library.
"""

from __future__ import annotations

import re
from email.utils import parseaddr

import email_validator
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

MAX_ADDRESS_LENGTH = 254  # characters: RFC 5321 4.5.3.1.3, and email-validator's own limit

# RFC 5322 atext, the same set email-validator accepts unquoted, without the Unicode extension.
_ATOM = r"[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+"
# A hostname label of at most 63 characters that neither starts nor ends with a hyphen.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
# The last label: letters only. Stricter than the library (which wants only a final letter):
# numeric or Punycode top-level domains simply take the slow path.
_TLD = r"[A-Za-z]{2,63}"
_PLAIN_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@((?:{_LABEL}\.)+{_TLD})")

# Domains the library refuses (special-use names), and mailbox names it lower-cases (RFC 2142).
_SPECIAL_USE_DOMAINS = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)
# They are all top-level names today, so the last label settles it in one look-up.
_SPECIAL_USE_TLDS = frozenset(d for d in _SPECIAL_USE_DOMAINS if "." not in d)
_ALL_SPECIAL_USE_ARE_TLDS = len(_SPECIAL_USE_TLDS) == len(_SPECIAL_USE_DOMAINS)
_CASE_INSENSITIVE_MAILBOXES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


class InvalidAddress(ValueError):
    """The address is not one we can send to; the message says why, for people."""


def fast_normalize(address: str) -> str | None:
    """The normalised address when the strict ASCII pattern settles it, else None (ask the library).

    None never means "invalid": it means "not sure here".
    """
    if len(address) > MAX_ADDRESS_LENGTH:
        return None
    match = _PLAIN_ADDRESS.fullmatch(address)
    if match is None:
        return None
    local, domain = match.group(1), match.group(2).lower()
    if local.lower() in _CASE_INSENSITIVE_MAILBOXES:
        return None
    # "ab--" labels are R-LDH (reserved) or Punycode ("xn--"), which the library decodes.
    if "--" in domain and any(label[2:4] == "--" for label in domain.split(".")):
        return None
    if _ALL_SPECIAL_USE_ARE_TLDS:
        if domain[domain.rindex(".") + 1 :] in _SPECIAL_USE_TLDS:
            return None
    elif any(domain == d or domain.endswith("." + d) for d in _SPECIAL_USE_DOMAINS):
        return None
    return f"{local}@{domain}"


def domain_of(address: str) -> str:
    """A stored address's domain, as the domain throttles and adaptive rates name it."""
    return address.rpartition("@")[2].lower()


def normalize_address(address: str) -> str:
    """The form we store and compare: email-validator's ``normalized`` (domain lower-cased, IDNA
    decoded, local part NFC), for an address given with or without surrounding spaces.

    Raises ``InvalidAddress`` with the library's explanation.
    """
    address = address.strip()
    fast = fast_normalize(address)
    if fast is not None:
        return fast
    try:
        validated = email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    return validated.normalized


def covering_domains(from_address: str) -> list[str]:
    """The domain of a From mailbox (``Name <a@b>`` or ``a@b``) and each of its parents, ASCII
    (IDNA) and lower-case, most specific first: a sender domain registered as any of these covers
    it (``mail.example.com`` covers ``news.mail.example.com``). Empty for no usable domain."""
    address = parseaddr(from_address)[1]
    domain = address.rpartition("@")[2].strip().rstrip(".").lower()
    if not domain:
        return []
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return []
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]
