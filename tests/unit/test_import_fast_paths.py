"""The import's fast paths (address check, attribute encoding) agree with the general ones."""

from __future__ import annotations

import json

import email_validator
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tidings.domain.addresses import InvalidAddress, fast_normalize, normalize_address
from tidings.errors import InvalidInput
from tidings.services.contacts import attributes_json, string_attributes_json

# Characters chosen to hit every edge of the pattern: atext, dots, hyphens, case, digits, a few
# that are never allowed unquoted, and non-ASCII letters that only the library may judge.
LOCAL_CHARS = "aZ09._+-!#$%&'*/=?^`{|}~ \"(),:;<>@[\\]é"
DOMAIN_CHARS = "aZ09.-_é"
SPECIAL_LABELS = [
    "xn--bcher-kva",
    "ab--cd",
    "test",
    "localhost",
    "local",
    "invalid",
    "onion",
    "arpa",
    "example",
    "com",
    "COM",
    "c0m",
    "123",
    "x" * 63,
    "y" * 64,
    "-a",
    "a-",
]


def _labels() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(DOMAIN_CHARS, min_size=0, max_size=12), st.sampled_from(SPECIAL_LABELS)
    )


addresses = st.one_of(
    st.builds(
        lambda local, labels: local + "@" + ".".join(labels),
        st.one_of(
            st.text(LOCAL_CHARS, min_size=0, max_size=20),
            st.sampled_from(["INFO", "Support", "postmaster", "a" * 65, "a" * 250]),
        ),
        st.lists(_labels(), min_size=1, max_size=5),
    ),
    st.emails(),
    st.text(max_size=40),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(addresses)
@example("Alice.Smith+tag@Example.COM")
@example("a@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 57 + ".com")
@example("x" * 240 + "@example.com")
def test_fast_path_never_accepts_what_the_library_rejects_and_normalises_the_same(
    address: str,
) -> None:
    fast = fast_normalize(address)
    if fast is None:
        return
    validated = email_validator.validate_email(address, check_deliverability=False)
    assert fast == validated.normalized


def test_fast_path_takes_ordinary_addresses() -> None:
    # Without this the property above would hold for a fast path that never answers.
    ordinary = [
        "alice@example.com",
        "Bob.Smith+news@Mail.Example.CO.UK",
        "o'neil_x-y@sub-1.example.org",
    ]
    assert [fast_normalize(a) for a in ordinary] == [
        "alice@example.com",
        "Bob.Smith+news@mail.example.co.uk",
        "o'neil_x-y@sub-1.example.org",
    ]


@pytest.mark.parametrize("address", ["INFO@example.com", "a@xn--bcher-kva.ch", "josé@Exämple.com"])
def test_addresses_the_fast_path_declines_are_normalised_by_the_library(address: str) -> None:
    assert fast_normalize(address) is None
    assert (
        normalize_address(address)
        == email_validator.validate_email(address, check_deliverability=False).normalized
    )


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at-sign",
        "a@localhost",
        "a@b.test",
        "a@b",
        "a b@c.com",
        "a@-b.com",
        "a..b@c.com",
        "<a@b.com>",
        "a@b.com\r\nBcc: x@y.com",
    ],
)
def test_invalid_addresses_are_refused_with_the_reason(address: str) -> None:
    with pytest.raises(InvalidAddress) as caught:
        normalize_address(address)
    assert str(caught.value)


def test_surrounding_spaces_are_ignored() -> None:
    assert normalize_address("  a@Example.com \t") == "a@example.com"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=6))
def test_the_fast_string_attributes_encoding_is_the_general_one(attributes: dict[str, str]) -> None:
    # The import's shortcut must store byte for byte what the API stores for the same object.
    try:
        general = attributes_json(attributes, max_bytes=10_000)
    except InvalidInput as refused:
        with pytest.raises(InvalidInput) as also_refused:
            string_attributes_json(attributes, max_bytes=10_000)
        assert also_refused.value.message == refused.message
    else:
        assert string_attributes_json(attributes, max_bytes=10_000) == general
        assert json.loads(general) == attributes
