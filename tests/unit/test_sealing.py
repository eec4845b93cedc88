"""Secrets at rest: sealed values open only under the same secret key and purpose."""

from __future__ import annotations

import pytest

from tidings.errors import ConfigurationError
from tidings.sealing import seal, unseal

KEY = "k" * 48


def test_a_sealed_value_opens_under_its_key_and_purpose_and_hides_the_secret() -> None:
    sealed = seal(KEY, b"hunter2-relay-password", purpose="transport:tenant=1")
    assert b"hunter2" not in sealed.encode()
    assert sealed != seal(KEY, b"hunter2-relay-password", purpose="transport:tenant=1")  # nonce
    assert unseal(KEY, sealed, purpose="transport:tenant=1") == b"hunter2-relay-password"


@pytest.mark.parametrize(
    ("key", "purpose"),
    [("other" * 10, "transport:tenant=1"), (KEY, "transport:tenant=2")],
    ids=["another-secret-key", "another-purpose"],
)
def test_a_sealed_value_does_not_open_elsewhere(key: str, purpose: str) -> None:
    sealed = seal(KEY, b"secret", purpose="transport:tenant=1")
    with pytest.raises(ConfigurationError, match="TIDINGS_SECRET_KEY"):
        unseal(key, sealed, purpose=purpose)


def test_an_altered_or_foreign_value_is_refused_not_misread() -> None:
    sealed = seal(KEY, b"secret", purpose="p")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    for bad in (flipped, "v9." + sealed[3:], "v1.***"):
        with pytest.raises(ConfigurationError):
            unseal(KEY, bad, purpose="p")
