"""The rules that tell a person's open or click from a machine's, one row per case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tidings.tracking.classify import HitFacts, Kind, classify, client_network

SENT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LATER = SENT + timedelta(minutes=30)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0 Safari/537.36"
)
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
HOME = "203.0.113.0/24"

# (case, kind, seconds after send, user agent, network, links in burst, expected reason)
CASES: list[tuple[str, Kind, float, str | None, str | None, int, str | None]] = [
    ("a person opens in Apple Mail at home", "open", 1800, IPHONE, HOME, 0, None),
    ("a person opens in a desktop browser", "open", 600, DESKTOP, "198.51.100.0/24", 0, None),
    ("Gmail's image proxy opens for its reader", "open", 900, GMAIL, "66.249.84.0/24", 0, None),
    ("a person clicks one link", "click", 1800, DESKTOP, HOME, 1, None),
    ("a person opens over IPv6", "open", 1800, IPHONE, "2001:db8:1::/48", 0, None),
    ("no user agent, later, home network", "open", 3600, None, HOME, 0, None),
    ("an open a day later", "open", 86400, DESKTOP, None, 0, None),
    ("Apple MPP from Apple's network", "open", 1800, IPHONE, "17.58.100.0/24", 0, "apple_mpp"),
    ("Apple MPP bare user agent", "open", 1800, "Mozilla/5.0", "104.28.1.0/24", 0, "apple_mpp"),
    ("Apple's network clicking is no MPP", "click", 1800, DESKTOP, "17.1.2.0/24", 1, None),
    ("the honeypot link", "honeypot", 1800, DESKTOP, HOME, 0, "honeypot"),
    ("the honeypot beats everything", "honeypot", 1, "Mozilla/5.0", "17.0.0.0/24", 0, "honeypot"),
    ("an open two seconds after sending", "open", 2, IPHONE, HOME, 0, "prefetch"),
    ("a click one second after sending", "click", 1, DESKTOP, HOME, 1, "prefetch"),
    ("just past the prefetch window", "open", 6, IPHONE, HOME, 0, None),
    ("two links within a second", "click", 1800, DESKTOP, HOME, 2, "burst"),
    ("every link within a second", "click", 1800, DESKTOP, HOME, 7, "burst"),
    ("Barracuda's user agent", "click", 1800, "Barracuda Sentinel (EE)", HOME, 1, "scanner"),
    ("Proofpoint's network", "click", 1800, DESKTOP, "148.163.140.0/24", 1, "scanner"),
    ("Mimecast's network", "open", 1800, DESKTOP, "205.139.110.0/24", 0, "scanner"),
    ("Defender Safe Links network", "click", 1800, DESKTOP, "40.94.30.0/24", 1, "scanner"),
    ("Exchange Online over IPv6", "click", 1800, DESKTOP, "2a01:111:f400::/48", 1, "scanner"),
    ("Googlebot", "click", 1800, "Mozilla/5.0 (compatible; Googlebot/2.1)", HOME, 1, "scanner"),
    ("Slack unfurling a link", "click", 1800, "Slackbot-LinkExpanding 1.0", HOME, 1, "scanner"),
    ("python-requests", "open", 1800, "python-requests/2.31", HOME, 0, "scanner"),
    ("curl", "click", 1800, "curl/8.4.0", HOME, 1, "scanner"),
    ("headless Chrome", "click", 1800, "Mozilla/5.0 HeadlessChrome/120.0", HOME, 1, "scanner"),
    ("a CUBOT phone is a person", "click", 1800, "Mozilla/5.0 (Linux; CUBOT X30)", HOME, 1, None),
    (
        "a scanner network beats Apple's rule",
        "open",
        1800,
        "Mozilla/5.0",
        "40.107.1.0/24",
        0,
        "scanner",
    ),
    ("a message never marked sent", "open", -1, IPHONE, HOME, 0, None),
]


@pytest.mark.parametrize(
    ("kind", "seconds", "agent", "network", "burst", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_classification(
    kind: Kind,
    seconds: float,
    agent: str | None,
    network: str | None,
    burst: int,
    expected: str | None,
) -> None:
    facts = HitFacts(
        kind=kind,
        at=SENT + timedelta(seconds=max(seconds, 0)),
        sent_at=None if seconds < 0 else SENT,
        user_agent=agent,
        network=network,
        links_in_burst=burst,
    )
    assert classify(facts) == expected


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48"),
        ("::ffff:17.58.1.2", "17.58.1.0/24"),
        ("not an address", None),
        (None, None),
        ("", None),
    ],
)
def test_only_the_client_network_is_kept(address: str | None, network: str | None) -> None:
    assert client_network(address) == network
