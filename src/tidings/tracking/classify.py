"""Who opened or clicked: a person, or a machine acting for them. Every rule is here, in order.

Mail privacy proxies and link scanners open and click on the recipient's behalf: counting them
as people inflates opens (Apple Mail Privacy Protection fetches every image of every mail) and
clicks (Microsoft Defender Safe Links, Proofpoint, Mimecast and Barracuda follow every link
before the recipient sees it). Tidings counts them apart (``opens_machine``, ``clicks_machine``).

A hit is a machine's when, in this order (the first rule that matches names the reason):

1. ``honeypot``: it followed the hidden link each tracked mail carries; no person can see it.
2. ``scanner``: its user agent names a known scanner or crawler, or it came from a network a
   scanner vendor publishes (the lists below; a client network is a /24 or /48, so a range
   narrower than that matches the whole /24 it lies in).
3. ``apple_mpp`` (opens): Apple's proxy network (17.0.0.0/8, Apple's own), or the bare
   ``Mozilla/5.0`` user agent with no platform that Apple's proxy fetches with. Apple's proxy
   also leaves through partners' networks (iCloud Private Relay's egress list, thousands of
   ranges that change): those opens pass for people's unless their user agent gives them away.
4. ``prefetch``: within ``PREFETCH_SECONDS`` of the message being sent: nobody reads (or
   clicks) a mail that fast; servers that fetch on delivery do.
5. ``burst`` (clicks): ``BURST_LINKS`` or more different links of one message within
   ``BURST_SECONDS``: a scanner following every link; people click one link at a time.

Decided: Google's image proxy (``GoogleImageProxy``) and Yahoo's fetch an image when the
recipient opens the mail in Gmail or Yahoo Mail (the proxy hides the reader's address, it does
not read for them): those are people's opens. Gmail caches the image, so a second open by the
same person may not reach us: ``opens_total`` undercounts Gmail readers, ``opens_unique`` does
not. Everything else is a person's.

The rules need a message's ``sent_at`` and its other clicks, so they run when the buffered hits
are flushed (``record.py``), never on the request path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal

Kind = Literal["open", "click", "honeypot"]

PREFETCH_SECONDS = 5.0  # a hit this soon after the send is a server's, not a reader's
BURST_SECONDS = 1.0  # different links of one message clicked within this window ...
BURST_LINKS = 2  # ... this many or more: a scanner following every link

#: Apple's own network: its Mail Privacy Protection proxy fetches from here.
APPLE_NETWORKS = ("17.0.0.0/8",)
#: The user agent Apple's proxy fetches images with: no platform, no engine.
APPLE_PROXY_AGENTS = frozenset({"mozilla/5.0"})

#: Networks published for link scanning and mail security gateways (review as vendors change
#: them): Microsoft Exchange Online Protection and Defender (Safe Links detonation), Proofpoint,
#: Mimecast, Barracuda.
SCANNER_NETWORKS = (
    "40.92.0.0/15",  # Microsoft Exchange Online Protection
    "40.107.0.0/16",
    "52.100.0.0/14",
    "104.47.0.0/17",
    "40.94.0.0/16",  # Microsoft Defender for Office 365 (Safe Links)
    "2a01:111:f400::/48",  # Microsoft Exchange Online (IPv6)
    "2a01:111:f403::/48",
    "148.163.128.0/19",  # Proofpoint
    "67.231.144.0/20",
    "205.220.160.0/19",
    "205.139.110.0/24",  # Mimecast
    "207.211.30.0/24",
    "207.211.31.0/25",
    "185.58.84.0/22",
    "91.220.42.0/24",
    "64.235.144.0/20",  # Barracuda
    "209.222.80.0/21",
    "35.157.190.224/27",
)

#: Substrings of user agents that are scanners, crawlers or link unfurlers (lower case).
SCANNER_AGENTS = (
    "barracuda",
    "proofpoint",
    "mimecast",
    "safelinks",
    "microsoft office protection",
    "ms-office-protection",
    "symantec",
    "trendmicro",
    "fortiguard",
    "sophos",
    "bot/",  # Googlebot/2.1, bingbot/2.0, Twitterbot/1.0 (not a bare "bot": the CUBOT phone)
    "bot-",  # Slackbot-LinkExpanding
    "bot;",
    "crawler",
    "spider",
    "facebookexternalhit",
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "scanner",
)
_SCANNER_AGENT = re.compile("|".join(re.escape(each) for each in SCANNER_AGENTS))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HitFacts:
    """What the flush knows about one hit."""

    kind: Kind
    at: datetime  # when it arrived
    sent_at: datetime | None  # when its message was sent (None: not recorded)
    user_agent: str | None
    network: str | None  # the client's /24 or /48, as ``client_network`` writes it
    #: Clicks: how many different links of its message were clicked within ``BURST_SECONDS`` of
    #: it, its own included (0 for opens).
    links_in_burst: int = 0


def client_network(address: str | None) -> str | None:
    """The client's network as kept: its /24 (IPv4) or /48 (IPv6), never the whole address."""
    if not address:
        return None
    return _network_of(address)


@lru_cache(maxsize=65_536)
def _network_of(address: str) -> str | None:
    """Cached: a flood comes from few addresses, and parsing one costs more than the route."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@lru_cache(maxsize=1)
def _ranges() -> tuple[tuple[Network, ...], tuple[Network, ...]]:
    return (
        tuple(ipaddress.ip_network(each) for each in APPLE_NETWORKS),
        tuple(ipaddress.ip_network(each) for each in SCANNER_NETWORKS),
    )


@lru_cache(maxsize=4096)
def _network_kind(network: str) -> str | None:
    """ "apple", "scanner" or None for a kept client network (cached: a flood comes from few)."""
    try:
        found = ipaddress.ip_network(network, strict=False)
    except ValueError:
        return None
    apple, scanners = _ranges()
    if any(found.version == each.version and found.overlaps(each) for each in scanners):
        return "scanner"
    if any(found.version == each.version and found.overlaps(each) for each in apple):
        return "apple"
    return None


def classify(facts: HitFacts) -> str | None:
    """None for a person's hit; else the reason it is a machine's (see the module docstring)."""
    if facts.kind == "honeypot":
        return "honeypot"
    agent = (facts.user_agent or "").strip().lower()
    network = _network_kind(facts.network) if facts.network else None
    if _SCANNER_AGENT.search(agent) is not None or network == "scanner":
        return "scanner"
    if facts.kind == "open" and (network == "apple" or agent in APPLE_PROXY_AGENTS):
        return "apple_mpp"
    if facts.sent_at is not None and (facts.at - facts.sent_at).total_seconds() < PREFETCH_SECONDS:
        return "prefetch"
    if facts.kind == "click" and facts.links_in_burst >= BURST_LINKS:
        return "burst"
    return None
