"""No Telegram user or chat id reaches the log by default (``log_message_text`` off): a user who
blocks or unblocks the bot, and a group that becomes a supergroup, are logged by conversation
label; with ``log_message_text`` on, the ids are shown. Logs are captured at DEBUG through the
CLI's JSON handler (``make_handler``), SDK loggers included, as tests/gateway/test_logs.py does.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from adapters.telegram.adapter import TelegramAdapter
from gateway.core.channel import AdapterServices, InboundRequest
from gateway.core.errors import StoreUnavailable
from gateway.core.keys import Keys
from gateway.core.logs import conversation_label, make_handler, set_message_text
from gateway.core.models import ConversationKey
from tests.adapters._telegram import SECRET, TOKEN, gateway_config
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update  # noqa: F401 - fixture

#: Distinctive enough that finding them in a line cannot be a coincidence.
USER = 987654321
OLD_GROUP = -4012345678
SUPERGROUP = -1004012345678
_SDK_LOGGERS = ("httpx", "httpcore", "telegram")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG, as the CLI's JSON handler renders it."""
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in _SDK_LOGGERS}
    stream = io.StringIO()
    handler = make_handler("json", stream=stream)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in _SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield stream
    root.removeHandler(handler)
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def adapter(fake: FakeTelegram, redis_url: str, http: httpx.AsyncClient, *, reveal: bool) -> TelegramAdapter:
    """Channel ``tg`` on ``redis_url`` (closed with the adapter by the test)."""
    if TOKEN not in fake.bots:
        fake.add_bot(TOKEN, username="clinic_bot")
    config = gateway_config(fake.url, {"tg": {}}, log_message_text=reveal)
    services = AdapterServices(config=config, http=http, redis=aioredis.Redis.from_url(redis_url), keys=Keys())
    channel = config.channels["tg"]
    assert channel.type == "telegram"
    built = TelegramAdapter("tg", channel, config.bots["demo"], services)
    await built.startup()
    return built


def request(update: dict[str, Any]) -> InboundRequest:
    headers = {"content-type": "application/json", "x-telegram-bot-api-secret-token": SECRET}
    return InboundRequest(channel="tg", headers=headers, body=json.dumps(update).encode(), received_at=time.time())


def bot_membership(update_id: int, chat: dict[str, Any], status: str) -> dict[str, Any]:
    """``my_chat_member``: the bot's status in ``chat`` became ``status`` (docs/PLATFORMS.md §1.4)."""
    bot = {"id": int(TOKEN.split(":")[0]), "is_bot": True, "first_name": "Clinic", "username": "clinic_bot"}

    def member(state: str) -> dict[str, Any]:
        return {"user": bot, "status": state, **({"until_date": 0} if state == "kicked" else {})}  # 0: for ever

    return {"update_id": update_id, "my_chat_member": {
        "chat": chat, "from": {"id": USER, "is_bot": False, "first_name": "Ada"}, "date": int(time.time()),
        "old_chat_member": member("member" if status == "kicked" else "kicked"), "new_chat_member": member(status),
    }}


def ours(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if '"adapters.telegram.' in line]


@pytest.mark.parametrize("reveal", [False, True], ids=["text-off", "text-on"])
async def test_blocking_and_unblocking_the_bot_logs_no_user_id_unless_text_is_asked_for(
    reveal: bool, fake_telegram: FakeTelegram, redis_url: str, http: httpx.AsyncClient, log_lines: io.StringIO
) -> None:
    tg = await adapter(fake_telegram, redis_url, http, reveal=reveal)
    set_message_text(reveal)  # what the CLI does once the configuration is loaded
    try:
        private = {"id": USER, "type": "private", "first_name": "Ada"}
        for update_id, status in ((1, "kicked"), (2, "member")):
            assert (await tg.parse(request(bot_membership(update_id, private, status)))).inbounds == ()
    finally:
        set_message_text(False)
        await tg.services.redis.aclose()
        await tg.aclose()

    lines = log_lines.getvalue().splitlines()
    label = conversation_label(ConversationKey("tg", f"chat:{USER}"), reveal=reveal)
    assert len([line for line in ours(log_lines) if label in line]) == 2, "both changes are logged"
    with_id = [line for line in lines if str(USER) in line]
    assert bool(with_id) is reveal, with_id


@pytest.mark.parametrize("reveal", [False, True], ids=["text-off", "text-on"])
async def test_a_group_migration_logs_no_chat_id_unless_text_is_asked_for(
    reveal: bool, fake_telegram: FakeTelegram, redis_url: str, http: httpx.AsyncClient, log_lines: io.StringIO
) -> None:
    tg = await adapter(fake_telegram, redis_url, http, reveal=reveal)
    set_message_text(reveal)
    try:
        notices = [
            message_update(1, chat_id=OLD_GROUP, user_id=USER, chat_type="group", migrate_to_chat_id=SUPERGROUP),
            message_update(2, chat_id=SUPERGROUP, user_id=USER, chat_type="supergroup", migrate_from_chat_id=OLD_GROUP),
        ]
        for notice in notices:
            assert (await tg.parse(request(notice))).inbounds == ()
        # The bot then leaves the old group: ignored, and logged without the group's id either.
        old = {"id": OLD_GROUP, "type": "group", "title": "Test group"}
        assert (await tg.parse(request(bot_membership(3, old, "kicked")))).inbounds == ()
    finally:
        set_message_text(False)
        await tg.services.redis.aclose()
        await tg.aclose()

    label = conversation_label(ConversationKey("tg", f"chat:{OLD_GROUP}"), reveal=reveal)
    assert len([line for line in ours(log_lines) if label in line]) == 3, "both notices and the departure"
    # The supergroup's id contains the group's digits; user ids appear nowhere.
    with_id = [line for line in log_lines.getvalue().splitlines() if str(OLD_GROUP)[1:] in line or str(USER) in line]
    assert bool(with_id) is reveal, with_id


async def test_a_membership_change_redis_refuses_keeps_the_user_id_out_of_the_error(
    fake_telegram: FakeTelegram, http: httpx.AsyncClient, log_lines: io.StringIO
) -> None:
    # Nothing listens on port 1. The edge and the poller log this error's text.
    tg = await adapter(fake_telegram, "redis://127.0.0.1:1/0", http, reveal=False)
    try:
        private = {"id": USER, "type": "private", "first_name": "Ada"}
        with pytest.raises(StoreUnavailable) as refused:
            await tg.parse(request(bot_membership(1, private, "kicked")))
    finally:
        await tg.services.redis.aclose()
        await tg.aclose()
    assert str(USER) not in str(refused.value) and str(USER) not in repr(refused.value)
    assert not [line for line in log_lines.getvalue().splitlines() if str(USER) in line]
