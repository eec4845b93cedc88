"""Standard Webhooks / Svix signatures: what verifies and what does not."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidings import webhook_signature
from tidings.errors import Unauthenticated

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
BODY = b'{"type":"email.bounced","data":{"email_id":"abc"}}'


def _headers(secret: str = SECRET, *, at: datetime = NOW, body: bytes = BODY) -> dict[str, Any]:
    stamp = int(at.timestamp())
    return {
        "message_id": "msg_1",
        "timestamp": str(stamp),
        "signature": webhook_signature.sign(secret, message_id="msg_1", timestamp=stamp, body=body),
    }


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body_with_the_decoded_secret() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = hmac.new(key, b"msg_1.1767225600." + BODY, hashlib.sha256).digest()
    assert _headers()["signature"] == "v1," + base64.b64encode(expected).decode()


def test_a_valid_signature_verifies() -> None:
    webhook_signature.verify(SECRET, body=BODY, now=NOW, **_headers())


def test_one_of_several_signatures_is_enough_during_a_key_rotation() -> None:
    headers = _headers()
    headers["signature"] = f"v1,bm90IGl0 {headers['signature']} v2,other"
    webhook_signature.verify(SECRET, body=BODY, now=NOW, **headers)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": BODY.replace(b"abc", b"abd")}, "does not match"),
        ({"secret": webhook_signature.new_secret()}, "does not match"),
        ({"now": NOW + timedelta(minutes=6)}, "too old"),
        ({"now": NOW - timedelta(minutes=6)}, "too old or too far in the future"),
        ({"signature": None}, "missing"),
        ({"message_id": ""}, "missing"),
        ({"timestamp": "yesterday"}, "not a number"),
        ({"message_id": "msg_2"}, "does not match"),
    ],
)
def test_anything_altered_missing_or_stale_is_refused(change: dict[str, Any], reason: str) -> None:
    arguments: dict[str, Any] = {"body": BODY, "now": NOW, **_headers()}
    secret = change.pop("secret", SECRET)
    arguments.update(change)
    with pytest.raises(Unauthenticated) as refused:
        webhook_signature.verify(secret, **arguments)
    assert reason in refused.value.message


def test_new_secrets_are_whsec_and_24_random_bytes() -> None:
    first, second = webhook_signature.new_secret(), webhook_signature.new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(webhook_signature.secret_key(first)) == 24
