"""Standard Webhooks signatures: the spec's known-answer vectors, and the reference library as
an independent cross-check (docs/PLATFORMS.md §3)."""

from __future__ import annotations

import pytest
import standardwebhooks

from adapters.webhook import signing
from gateway.core.errors import SignatureInvalid
from tests.support.samples import load_sample


def _vector(name: str) -> dict:
    return load_sample(name)


@pytest.mark.parametrize("name", ["standardwebhooks_vector_reference_sign.json", "standardwebhooks_vector_rust_sign.json"])
def test_known_answer_vectors_sign_and_verify(name: str) -> None:
    vector = _vector(name)
    headers = vector["headers"]
    key = signing.decode_secret(vector["secret"])
    body = vector["raw_body"].encode()
    assert signing.sign(key, headers["webhook-id"], int(headers["webhook-timestamp"]), body) == headers["webhook-signature"]
    assert signing.verify(key, headers, body, now=int(headers["webhook-timestamp"])) == headers["webhook-id"]


def test_signature_with_last_character_changed_is_refused() -> None:
    vector = _vector("standardwebhooks_vector_reference_sign.json")
    headers = {**vector["headers"], "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}
    with pytest.raises(SignatureInvalid):
        signing.verify(signing.decode_secret(vector["secret"]), headers, vector["raw_body"].encode(), now=1614265330)


def test_any_matching_v1_entry_is_accepted_and_other_versions_ignored() -> None:
    vector = _vector("standardwebhooks_vector_reference_sign.json")
    good = vector["headers"]["webhook-signature"]
    headers = {**vector["headers"], "webhook-signature": f"v1a,AAAA v1,Zm9v {good}"}
    key = signing.decode_secret(vector["secret"])
    assert signing.verify(key, headers, vector["raw_body"].encode(), now=1614265330)


@pytest.mark.parametrize("offset", [-301, 301])
def test_timestamp_outside_five_minutes_is_refused(offset: int) -> None:
    vector = _vector("standardwebhooks_vector_reference_sign.json")
    key = signing.decode_secret(vector["secret"])
    with pytest.raises(SignatureInvalid, match="too"):
        signing.verify(key, vector["headers"], vector["raw_body"].encode(), now=1614265330 - offset)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(missing: str) -> None:
    vector = _vector("standardwebhooks_vector_reference_sign.json")
    headers = {k: v for k, v in vector["headers"].items() if k != missing}
    with pytest.raises(SignatureInvalid, match="missing"):
        signing.verify(signing.decode_secret(vector["secret"]), headers, vector["raw_body"].encode(), now=1614265330)


def test_our_signatures_verify_with_the_reference_library() -> None:
    secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
    body = b'{"conversation_id":"c","text":"hi"}'
    import time

    stamp = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": signing.sign(signing.decode_secret(secret), "msg_1", stamp, body),
    }
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {"conversation_id": "c", "text": "hi"}


def test_unpadded_secret_is_tolerated() -> None:
    assert signing.decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == signing.decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert len(signing.decode_secret("whsec_YWJj")) == 3
