"""A Telegram group that becomes a supergroup mid-conversation keeps its OCS session
(docs/PLATFORMS.md §1.5): the fake Bot API refuses sends to the old id with 400 + migrate_to_chat_id,
and Telegram's service messages announce the move in both chats.

The simulator answers ``Echo #n`` with n counting its session's user messages, so "Echo #2"
in the supergroup means the same session continued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from tests.adapters._telegram import SECRET, TOKEN
from tests.conftest import Stack, wait_for
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update  # noqa: F401 - fixture

USER = 4242
OLD_GROUP = -4012345678
SUPERGROUP = -1004012345678


@pytest.fixture
def stack(fake_telegram: FakeTelegram, make_stack: Callable[..., Stack]) -> Stack:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    return make_stack(channels={"tg": {
        "type": "telegram", "bot": "demo", "token": Secret(TOKEN), "webhook_secret": Secret(SECRET),
        "api_base_url": fake_telegram.url, "group_answer": "all", "group_interval_s": 0.2,
    }})


def post(stack: Stack, update: dict[str, Any]) -> None:
    response = stack.http.post(
        f"{stack.url}/telegram/tg", content=json.dumps(update),
        headers={"content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET},
    )
    assert response.status_code == 200, response.text


def group_message(update_id: int, text: str, *, chat_id: int = OLD_GROUP, **fields: Any) -> dict[str, Any]:
    chat_type = "group" if chat_id == OLD_GROUP else "supergroup"
    return message_update(update_id, chat_id=chat_id, user_id=USER, text=text, chat_type=chat_type, **fields)


def migration_notices(first_update_id: int) -> list[dict[str, Any]]:
    """What Telegram sends when the group is upgraded: a notice in each chat (no text)."""
    return [
        group_message(first_update_id, None, migrate_to_chat_id=SUPERGROUP),  # type: ignore[arg-type]
        group_message(first_update_id + 1, None, chat_id=SUPERGROUP, migrate_from_chat_id=OLD_GROUP),  # type: ignore[arg-type]
    ]


def texts(fake: FakeTelegram, chat_id: int, count: int) -> list[str]:
    found: list[str] = wait_for(lambda: (t := fake.sent_texts(chat_id)) and len(t) >= count and t,
                                what=f"{count} replies in chat {chat_id}")
    return found


def sessions(stack: Stack) -> list[str]:
    return [s.id for s in stack.sim.state.list_sessions()]


def test_the_supergroup_continues_the_groups_ocs_session(stack: Stack, fake_telegram: FakeTelegram) -> None:
    post(stack, group_message(1, "before the upgrade"))
    assert texts(fake_telegram, OLD_GROUP, 1) == ["Echo #1: before the upgrade"]
    [session] = sessions(stack)

    fake_telegram.migrate_chat(OLD_GROUP, SUPERGROUP)
    for notice in migration_notices(2):
        post(stack, notice)
    post(stack, group_message(4, "after the upgrade", chat_id=SUPERGROUP))

    assert texts(fake_telegram, SUPERGROUP, 1) == ["Echo #2: after the upgrade"]
    assert sessions(stack) == [session]
    assert stack.sim.state.user_messages(session) == ["before the upgrade", "after the upgrade"]


def test_a_reply_in_flight_follows_the_group_to_the_supergroup(stack: Stack, fake_telegram: FakeTelegram) -> None:
    stack.sim.state.knobs.reply_latency_s = 1.0
    post(stack, group_message(1, "asked in the old group"))
    wait_for(lambda: stack.sim.state.list_sessions(), what="the question reaching OCS")
    # The upgrade happens while OCS works; its notices have not reached us yet.
    fake_telegram.migrate_chat(OLD_GROUP, SUPERGROUP)

    assert texts(fake_telegram, SUPERGROUP, 1) == ["Echo #1: asked in the old group"]
    refused = [c for c in fake_telegram.calls("sendMessage") if c.params.get("chat_id") == OLD_GROUP]
    assert refused and all(c.status == 400 for c in refused)

    # The refused send taught the gateway the new id: the next message continues the session.
    stack.sim.state.knobs.reply_latency_s = 0.05
    [session] = sessions(stack)
    post(stack, group_message(2, "asked in the supergroup", chat_id=SUPERGROUP))
    assert texts(fake_telegram, SUPERGROUP, 2)[1] == "Echo #2: asked in the supergroup"
    assert sessions(stack) == [session]



def bot_membership(update_id: int, chat_id: int, status: str) -> dict[str, Any]:
    """A ``my_chat_member`` update: the bot's own status in ``chat_id`` became ``status``."""
    chat = {"id": chat_id, "type": "group" if chat_id == OLD_GROUP else "supergroup", "title": "Test group"}
    bot = {"id": int(TOKEN.split(":")[0]), "is_bot": True, "first_name": "Clinic", "username": "clinic_bot"}
    was = "member" if status in ("left", "kicked") else "left"
    now: dict[str, Any] = {"user": bot, "status": status}
    if status == "kicked":
        now["until_date"] = 0  # a ban says until when (0: for ever); PTB needs it
    return {"update_id": update_id, "my_chat_member": {
        "chat": chat, "from": {"id": USER, "is_bot": False, "first_name": "Ada"}, "date": int(time.time()),
        "old_chat_member": {"user": bot, "status": was}, "new_chat_member": now,
    }}


def group_gone(stack: Stack) -> bool:
    """Whether the group's conversation (which the supergroup continues) is marked gone."""
    return stack.redis.hget(Keys().conversation(ConversationKey("tg", f"chat:{OLD_GROUP}")), "gone") is not None


@pytest.mark.parametrize("status", ["left", "kicked"])
@pytest.mark.parametrize("supergroup_member_first", [True, False], ids=["member-then-old-left", "old-left-then-member"])
def test_the_old_groups_departure_after_the_migration_does_not_end_the_continuing_conversation(
    stack: Stack, fake_telegram: FakeTelegram, status: str, supergroup_member_first: bool
) -> None:
    post(stack, group_message(1, "before the upgrade"))
    assert texts(fake_telegram, OLD_GROUP, 1) == ["Echo #1: before the upgrade"]
    fake_telegram.migrate_chat(OLD_GROUP, SUPERGROUP)
    for notice in migration_notices(2):
        post(stack, notice)

    # Telegram tells the bot it is in the supergroup; a departure from the old group may come
    # too, and webhooks deliver the two chats in separate queues, so in either order.
    member, departed = bot_membership(4, SUPERGROUP, "member"), bot_membership(5, OLD_GROUP, status)
    for update in ([member, departed] if supergroup_member_first else [departed, member]):
        post(stack, update)  # answered 200 once recorded
        assert not group_gone(stack)

    post(stack, group_message(6, "after the upgrade", chat_id=SUPERGROUP))
    assert texts(fake_telegram, SUPERGROUP, 1) == ["Echo #2: after the upgrade"]


def test_the_old_groups_departure_just_before_the_migration_notices_is_undone_by_them(
    stack: Stack, fake_telegram: FakeTelegram
) -> None:
    post(stack, group_message(1, "before the upgrade"))
    assert texts(fake_telegram, OLD_GROUP, 1) == ["Echo #1: before the upgrade"]
    fake_telegram.migrate_chat(OLD_GROUP, SUPERGROUP)

    # Nothing tells the gateway yet that this "left" is the upgrade's: it is recorded as such...
    post(stack, bot_membership(2, OLD_GROUP, "left"))
    assert group_gone(stack)
    post(stack, bot_membership(3, SUPERGROUP, "member"))
    # ...until a notice shows the bot was there for the upgrade, so it is in the supergroup.
    for notice in migration_notices(4):
        post(stack, notice)
    assert not group_gone(stack)


def test_leaving_the_supergroup_ends_the_conversation_it_continues(stack: Stack, fake_telegram: FakeTelegram) -> None:
    post(stack, group_message(1, "before the upgrade"))
    assert texts(fake_telegram, OLD_GROUP, 1) == ["Echo #1: before the upgrade"]
    fake_telegram.migrate_chat(OLD_GROUP, SUPERGROUP)
    for notice in migration_notices(2):
        post(stack, notice)
    post(stack, bot_membership(4, SUPERGROUP, "kicked"))
    assert group_gone(stack)
