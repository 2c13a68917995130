"""Files both ways on the webhook channel: a user's file by URL reaches OCS as an upload; a file
the bot attaches reaches the callback, its bytes fetched with the OCS Bearer token."""

from __future__ import annotations

import base64
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from gateway.core.keys import Keys
from tests.conftest import Stack, settled, wait_for
from tests.support.servers import UvicornThread
from workers.turns import UNATTACHED_MARKER

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _file_server() -> UvicornThread:
    async def photo(request: object) -> Response:
        return Response(PNG, media_type="image/png")

    async def missing(request: object) -> Response:
        return Response("gone", status_code=404)

    async def program(request: object) -> Response:
        return Response(b"MZ" + b"\x00" * 64, media_type="application/octet-stream")

    return UvicornThread(
        Starlette(routes=[Route("/photo.png", photo), Route("/missing.pdf", missing), Route("/setup.exe", program)])
    )


def test_attachment_by_url_is_uploaded_to_ocs_with_the_message(make_stack: Callable[..., Stack]) -> None:
    with _file_server() as files:
        # Loopback is refused unless allowed; allow only the file server's port, never Redis's.
        stack = make_stack(fetch_allowlist=(files.removeprefix("http://"),))
        stack.say("c1", "see photo", extra={"attachments": [{"url": f"{files}/photo.png", "content_type": "image/png"}]})
        wait_for(lambda: stack.receiver.texts("c1"), what="a reply")
    (uploaded,) = stack.sim.state.uploaded_files()
    assert uploaded.name == "photo.png" and uploaded.data == PNG
    assert stack.receiver.texts("c1")[0].startswith("Echo #1: see photo")
    assert "photo.png" in stack.receiver.texts("c1")[0]


def test_unfetchable_attachment_does_not_sink_the_text_and_the_user_hears_why(make_stack: Callable[..., Stack]) -> None:
    with _file_server() as files:
        stack = make_stack(fetch_allowlist=(files.removeprefix("http://"),))
        stack.say("c1", "and this", extra={"attachments": [{"url": f"{files}/missing.pdf"}]})
        wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the notice and the reply")
    assert stack.sim.state.uploaded_files() == []
    (session,) = stack.sim.state.list_sessions()
    (sent,) = stack.sim.state.user_messages(session.id)
    assert sent == f"and this\n{UNATTACHED_MARKER}"  # the user's words and a neutral marker only
    notice, answer = stack.receiver.received
    assert notice["kind"] == "notice" and notice["text"] == "I couldn't open missing.pdf, so I answered your words without it."
    assert answer["kind"] == "answer" and answer["text"] == f"Echo #1: and this\n{UNATTACHED_MARKER}"


def test_a_file_type_ocs_refuses_reaches_the_bot_as_a_marker_not_as_the_error_body(make_stack: Callable[..., Stack]) -> None:
    """What a Telegram voice note did before voice was heard: OCS refuses a type it does not take
    (docs/OCS.md §3.3: '.ogg' then, '.exe' now) and its error body reached the bot as if the user
    had typed it."""
    with _file_server() as files:
        stack = make_stack(fetch_allowlist=(files.removeprefix("http://"),))
        stack.say("c1", "", extra={"attachments": [{"url": f"{files}/setup.exe", "content_type": "application/octet-stream"}]})
        wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the notice and the reply")
    (session,) = stack.sim.state.list_sessions()
    assert stack.sim.state.user_messages(session.id) == [UNATTACHED_MARKER]
    notice, _ = stack.receiver.texts("c1")
    assert "setup.exe" in notice and "supported" not in notice and "Allowed types" not in notice


def test_reply_attachment_reaches_the_callback_inline(stack: Stack) -> None:
    stack.sim.state.knobs.reply_attachments = True
    stack.say("c1", "send me the roster")
    wait_for(lambda: len(stack.receiver.received) == 2, what="text and file callbacks")
    text, file_part = stack.receiver.received
    assert text["text"] == "Echo #1: send me the roster" and text["parts"] == 2
    (attachment,) = file_part["attachments"]
    stored = next(f for f in stack.sim.state.files.values() if f.name == attachment["name"])
    assert base64.b64decode(attachment["content_base64"]) == stored.data
    assert file_part["part"] == 2


def test_reply_attachment_over_the_bots_cap_goes_without_its_bytes_and_the_text_still_goes(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(bots={"demo": {"max_file_bytes": 8}})
    stack.sim.state.knobs.reply_attachments = True
    stack.say("c1", "send me the roster")
    wait_for(lambda: len(stack.receiver.received) == 2, what="text and file callbacks")
    text, file_part = stack.receiver.received
    assert text["text"] == "Echo #1: send me the roster"
    (attachment,) = file_part["attachments"]
    assert attachment["name"] == "reply-1.txt" and "content_base64" not in attachment
    settled(stack.redis)
    assert stack.redis.zcard(Keys().dlq) == 0  # a file left out is not a failed turn


def test_reply_attachment_on_another_host_never_gets_the_bots_token(stack: Stack) -> None:
    # OCS names a file URL outside its own origin (here: another host name for the same
    # machine). Before issue 15 the Bearer token went with the download.
    stack.sim.state.base_url = stack.sim.url.replace("127.0.0.1", "localhost")
    stack.sim.state.knobs.reply_attachments = True
    stack.say("c1", "send me the roster")
    wait_for(lambda: len(stack.receiver.received) == 2, what="text and file callbacks")
    text, file_part = stack.receiver.received
    assert text["text"] == "Echo #1: send me the roster"
    (attachment,) = file_part["attachments"]
    assert attachment["url"].startswith("http://localhost:") and "content_base64" not in attachment
    # Refused as an internal address (no fetch_allowlist) before any connection: nothing reached OCS.
    assert stack.sim.state.request_count("files") == 0
