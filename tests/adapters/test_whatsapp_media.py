"""A user's WhatsApp media: ``GET /{media-id}`` → a short-lived URL → its bytes with the token,
through the SSRF guard, under the size cap, and the token never to another host."""

from __future__ import annotations

import pytest

from gateway.core.errors import AttachmentUnavailable, RetryLater
from gateway.core.models import Attachment
from tests.adapters._whatsapp import MakeEnv, make_whatsapp  # noqa: F401 - fixture
from tests.fakes.whatsapp_api import FakeWhatsApp, fake_whatsapp  # noqa: F401 - fixture

ROUTE = {"wa_id": "16505551234", "message_id": "wamid.IN"}
LOOPBACK = ["127.0.0.1"]


async def test_media_is_fetched_with_the_token_from_the_url_meta_gives(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(fetch_allowlist=LOOPBACK)
    media_id = env.fake.add_media(b"OggS voice bytes", "audio/ogg")
    got = await env.adapter.download(Attachment(ref=media_id, name="audio.ogg", content_type="audio/ogg", voice=True), ROUTE)
    assert got.data == b"OggS voice bytes" and got.content_type == "audio/ogg"
    assert env.fake.media_authorizations() == ["Bearer EAAJB-test-token"]


async def test_the_type_meta_states_fills_in_an_unknown_one(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(fetch_allowlist=LOOPBACK)
    media_id = env.fake.add_media(b"%PDF", "application/pdf")
    got = await env.adapter.download(Attachment(ref=media_id, name="doc"), ROUTE)
    assert got.content_type == "application/pdf"


async def test_the_token_never_goes_to_a_host_other_than_metas(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(fetch_allowlist=LOOPBACK)
    with FakeWhatsApp() as elsewhere:
        media_id = env.fake.add_media(b"secret", "image/jpeg")
        assert elsewhere.add_media(b"secret", "image/jpeg") == media_id
        env.fake.media_url_base = elsewhere.url  # another origin (another port) than the Graph API's
        with pytest.raises(AttachmentUnavailable, match="HTTP 401"):
            await env.adapter.download(Attachment(ref=media_id, name="a.jpg", content_type="image/jpeg"), ROUTE)
        assert elsewhere.media_authorizations() == [""]


async def test_a_media_url_on_an_internal_address_is_refused(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp()  # no fetch_allowlist: loopback is internal
    media_id = env.fake.add_media(b"x", "image/jpeg")
    with pytest.raises(AttachmentUnavailable, match="may not fetch"):
        await env.adapter.download(Attachment(ref=media_id, name="a.jpg", content_type="image/jpeg"), ROUTE)
    assert env.fake.media_authorizations() == []


async def test_a_file_over_the_cap_is_refused_by_its_stated_size_before_any_byte(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(fetch_allowlist=LOOPBACK)
    media_id = env.fake.add_media(b"v" * 5000, "audio/ogg")
    with pytest.raises(AttachmentUnavailable, match="limit is 1000 bytes"):
        await env.adapter.download(Attachment(ref=media_id, name="a.ogg", content_type="audio/ogg"), ROUTE, max_bytes=1000)
    assert env.fake.media_authorizations() == []


async def test_an_unknown_media_id_is_unavailable_not_retried(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(fetch_allowlist=LOOPBACK)
    with pytest.raises(AttachmentUnavailable):
        await env.adapter.download(Attachment(ref="123456", name="a.jpg"), ROUTE)
    with pytest.raises(AttachmentUnavailable, match="not a WhatsApp media id"):
        await env.adapter.download(Attachment(ref="../../me", name="a.jpg"), ROUTE)


async def test_a_failing_graph_api_is_retried_later(make_whatsapp: MakeEnv) -> None:
    env = await make_whatsapp(api_base_url="http://127.0.0.1:9/v23.0", fetch_allowlist=LOOPBACK)
    with pytest.raises(RetryLater):
        await env.adapter.download(Attachment(ref="123", name="a.jpg"), ROUTE)
