"""The pure parts of voice: the stored message keeps reading across versions, what a Markdown answer
sounds like, what the turn records of what was heard, and the config's refusals."""

from __future__ import annotations

import json

import pytest

from gateway.config_loading import GatewayConfig
from gateway.core.config import SpeechConfig
from gateway.core.errors import ConfigError
from gateway.core.models import Attachment, ConversationKey, Inbound, InboundKind
from workers.voice_notes import Heard
from workers.voice_replies import speakable

KEY = ConversationKey("tg", "chat:1")


def _inbound(*attachments: Attachment) -> Inbound:
    return Inbound(key=KEY, event_id="e1", kind=InboundKind.MESSAGE, sender_id="u1", attachments=attachments)


def test_a_voice_attachment_round_trips_and_a_plain_one_is_stored_as_before() -> None:
    voice = Attachment("FILE1", "voice_u1.ogg", "audio/ogg", 10481, voice=True, duration_s=3.0)
    photo = Attachment("FILE2", "photo.jpg", "image/jpeg", 100)
    stored = json.loads(_inbound(voice, photo).to_json())["attachments"]
    assert stored[1] == {"ref": "FILE2", "name": "photo.jpg", "content_type": "image/jpeg", "size": 100}
    assert Inbound.from_json(_inbound(voice, photo).to_json()).attachments == (voice, photo)


def test_an_item_stored_before_voice_and_one_from_a_later_version_both_read() -> None:
    old = '{"key":"tg/chat:1","event_id":"e1","kind":"message","sender_id":"u1","attachments":' \
          '[{"ref":"F","name":"v.ogg","content_type":"audio/ogg","size":5}]}'
    (attachment,) = Inbound.from_json(old).attachments
    assert attachment == Attachment("F", "v.ogg", "audio/ogg", 5) and attachment.spoken  # audio/* is speech
    newer = old.replace('"size":5', '"size":5,"voice":true,"waveform":"AAEC"')
    assert Inbound.from_json(newer).attachments[0].voice


@pytest.mark.parametrize(("attachment", "spoken"), [
    (Attachment("a", "x.mp3", "audio/mpeg"), True),
    (Attachment("a", "note.mp4", "video/mp4", voice=True), True),
    (Attachment("a", "film.mp4", "video/mp4"), False),
    (Attachment("a", "doc.pdf", "application/pdf"), False),
])
def test_speech_is_what_the_adapter_flags_or_any_audio(attachment: Attachment, spoken: bool) -> None:
    assert attachment.spoken is spoken


def test_markdown_is_read_as_its_words() -> None:
    markdown = "# Hours\n\n**Open** 9–5, see [the page](https://example.com/x).\n\n- Mon\n- Tue\n\n```\ncode()\n```\n"
    assert speakable(markdown) == "Hours\nOpen 9–5, see the page.\nMon\nTue"


def test_a_long_answer_is_spoken_up_to_the_limit_and_cut_after_a_sentence() -> None:
    text = "First sentence here. " * 10 + "The rest goes on and on"
    spoken = speakable(text, max_chars=100)
    assert len(spoken) <= 100 and spoken.endswith("here.")
    assert speakable("word " * 50, max_chars=22) == "word word word word"


def test_what_was_heard_round_trips_and_notices_are_told_once_each() -> None:
    heard = Heard(lines=("[voice message] hi",), notices=("n", "n"), echoes=("🎤 hi",), told=1)
    assert Heard.from_json(heard.to_json()) == heard
    assert heard.messages == ("n", "🎤 hi")


def test_the_speech_block_refuses_a_secret_written_in_the_file_and_an_unknown_mode() -> None:
    base = {"bots": {"clinic": {"chatbot_id": "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23", "auth": "keyless"}}}
    with pytest.raises(ConfigError, match=r"bots\.clinic\.speech\.api_key: secrets are not written"):
        GatewayConfig.from_mapping({"bots": {"clinic": {**base["bots"]["clinic"], "speech": {"api_key": "sk-live"}}}})
    with pytest.raises(ConfigError, match=r"bots\.clinic\.speech\.voice_replies"):
        GatewayConfig.from_mapping({"bots": {"clinic": {**base["bots"]["clinic"], "speech": {"voice_replies": "sometimes"}}}})
    assert SpeechConfig().base_url == "https://api.openai.com/v1" and SpeechConfig().max_audio_bytes == 25 * 1024 * 1024
