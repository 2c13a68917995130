"""The Redis keys are what deployed data is found by: the strings themselves are pinned here, the
shared ones (``gateway.core.keys``) and each adapter's own (``adapters/<platform>/keys.py``)."""

from __future__ import annotations

import pytest

from adapters.slack.keys import SlackKeys
from adapters.telegram.keys import TelegramKeys
from gateway.core.keys import CORE_PREFIXES, Keys
from gateway.core.models import ConversationKey

KEYS = Keys()
CONV = ConversationKey("hooks", "c-1")


def test_the_shared_keys_are_the_deployed_strings() -> None:
    assert KEYS.seen("hooks", "e-1") == "ocsgw:seen:hooks:e-1"
    assert KEYS.inbox(CONV) == "ocsgw:inbox:hooks/c-1"
    assert KEYS.turn(CONV) == "ocsgw:turn:hooks/c-1"
    assert KEYS.conversation(CONV) == "ocsgw:conv:hooks/c-1"
    assert KEYS.lease(CONV) == "ocsgw:lease:hooks/c-1"
    assert KEYS.active == "ocsgw:active"
    assert KEYS.dead_letter("d-1") == "ocsgw:dlq:d-1"
    assert KEYS.voice_audio("9f2c.3") == "ocsgw:voice:9f2c.3"


def test_the_telegram_keys_are_the_deployed_strings() -> None:
    tg = TelegramKeys.of(KEYS)
    assert tg.chat_pace("tg", "55") == "ocsgw:tg:pace:tg:chat:55"
    assert tg.bot_pace("tg") == "ocsgw:tg:pace:tg:bot"
    assert tg.poll_lease("777000111") == "ocsgw:tg:poll:777000111:lease"
    assert tg.poll_offset("777000111") == "ocsgw:tg:poll:777000111:offset"
    assert tg.migrated("tg") == "ocsgw:tg:migrated:tg"
    assert tg.chat_alias("tg") == "ocsgw:tg:chat_alias:tg"


def test_the_slack_keys_are_the_deployed_strings() -> None:
    slack = SlackKeys.of(KEYS)
    assert slack.installation("sl", "TA") == "ocsgw:slack:install:sl:TA"
    assert slack.oauth_state("st-1") == "ocsgw:slack:state:st-1"
    assert slack.rotation_lock("sl", "TA") == "ocsgw:slack:rotating:sl:TA"
    assert slack.thread("sl", "TA", "C1", "1700000000.000100") == "ocsgw:slack:thread:sl:TA:C1:1700000000.000100"
    assert slack.pace("sl", "TA", "C1") == "ocsgw:slack:pace:sl:TA:C1"


def test_adapter_keys_follow_the_namespace() -> None:
    assert TelegramKeys.of(Keys("staging")).poll_offset("1") == "staging:tg:poll:1:offset"


@pytest.mark.parametrize("prefix", [*sorted(CORE_PREFIXES), "", "tg:poll"])
def test_an_adapter_cannot_take_a_shared_or_malformed_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="cannot prefix an adapter's keys"):
        KEYS.for_adapter(prefix)
