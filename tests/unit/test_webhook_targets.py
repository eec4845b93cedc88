"""The SSRF guard: which webhook targets are refused."""

from __future__ import annotations

import ipaddress

import pytest

from tidings.errors import InvalidInput
from tidings.webhook_targets import check_addresses, is_public, parse_target


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
    ],
)
def test_private_loopback_link_local_and_reserved_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_internet_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_one_private_address_among_public_ones_refuses_the_target() -> None:
    target = parse_target("https://hooks.example.com/in")
    addresses = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")]
    with pytest.raises(InvalidInput, match="not allowed") as refused:
        check_addresses(target, addresses, allow_private=False)
    assert refused.value.field == "url" and "10.0.0.5" not in refused.value.message
    check_addresses(target, addresses, allow_private=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "https:// or http://"),
        ("file:///etc/passwd", "https:// or http://"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https:///path", "name a host"),
        ("https://example.com/#frag", "fragment"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com:99999/", "not valid"),
    ],
)
def test_urls_that_cannot_be_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_target(url)


def test_the_request_goes_to_the_checked_address_with_the_name_in_the_host_header() -> None:
    target = parse_target("https://Hooks.Example.com:8443/in?x=1")
    assert target.host == "hooks.example.com"
    assert target.host_header == "hooks.example.com:8443"
    assert (
        target.pinned_url(ipaddress.ip_address("93.184.216.34"))
        == "https://93.184.216.34:8443/in?x=1"
    )
    six = parse_target("http://[2606:4700::1]/")
    assert six.pinned_url(ipaddress.ip_address("2606:4700::1")) == "http://[2606:4700::1]:80/"
