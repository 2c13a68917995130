"""Voice on Telegram end to end (docs/VOICE.md): voice notes, audio files and video notes in as
words; answers back as a voice note (sendVoice, OGG/Opus) after the words; the limits checked on
what Telegram says before any byte is fetched; a user who takes no voice notes still gets the words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.speech.audio import probe
from tests.adapters._telegram import SECRET, TOKEN
from tests.conftest import Stack, settled, wait_for
from tests.fakes.openai_audio import FakeOpenAIAudio, fake_speech
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update
from tests.support.audio import sine, title_of, video_note, voice_note

__all__ = ["fake_speech", "fake_telegram"]

USER = 4242
KEY = "sk-test-speech-key-0123456789"


def build(fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack], *,
          speech: dict[str, Any] | None = None, **channel: Any) -> Stack:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    bots: dict[str, Any] = {}
    if speech is not None:
        bots = {"demo": {"speech": {"base_url": fake_speech.base_url, "api_key": Secret(KEY), **speech}}}
    return make_stack(bots=bots, channels={"tg": {
        "type": "telegram", "bot": "demo", "token": Secret(TOKEN), "webhook_secret": Secret(SECRET),
        "api_base_url": fake_telegram.url, **channel,
    }})


def send(stack: Stack, update: dict[str, Any]) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    assert stack.http.post(f"{stack.url}/telegram/tg", json=update, headers=headers).status_code == 200


def voice_update(fake: FakeTelegram, update_id: int, data: bytes, *, duration: int = 1, size: int | None = None,
                 kind: str = "voice", **media: Any) -> dict[str, Any]:
    file_id = f"{kind.upper()}-{update_id}"
    fake.add_file(file_id, data, file_path=f"{kind}/file_{update_id}.oga", size=size)
    item = {"file_id": file_id, "file_unique_id": f"u{update_id}", "duration": duration,
            "file_size": len(data) if size is None else size, **media}
    if kind == "voice":
        item.setdefault("mime_type", "audio/ogg")
    if kind == "video_note":
        item["length"] = 240
    return message_update(update_id, chat_id=USER, user_id=USER, **{kind: item})


def ocs_messages(stack: Stack) -> list[str]:
    return [m for s in stack.sim.state.list_sessions() for m in stack.sim.state.user_messages(s.id)]


def test_a_voice_note_is_heard_and_answered_in_words_then_in_voice(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack = build(fake_telegram, fake_speech, make_stack, speech={"voice_replies": "reciprocal"})
    send(stack, voice_update(fake_telegram, 1, voice_note(1.0, title="when do you open"), duration=1))
    wait_for(lambda: fake_telegram.sent_voices(USER), what="the voice reply")
    assert ocs_messages(stack) == ["[voice message] when do you open"]
    assert fake_telegram.sent_texts(USER) == ["Echo #1: [voice message] when do you open"]
    (voice,) = fake_telegram.sent_voices(USER)
    audio = voice.files["voice"].data
    assert (probe(audio).container, probe(audio).codec) == ("ogg", "opus")  # what sendVoice plays
    assert title_of(audio) == "Echo #1: [voice message] when do you open"
    assert voice.params["duration"] >= 1 and "caption" not in voice.params
    sent = [c.method for c in fake_telegram.calls() if c.method in ("sendMessage", "sendVoice")]
    assert sent == ["sendMessage", "sendVoice"]  # the words first, then the voice
    assert [c.params["action"] for c in fake_telegram.calls("sendChatAction")][:1] == ["typing"]


def test_a_video_notes_sound_is_heard_without_its_picture(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack = build(fake_telegram, fake_speech, make_stack, speech={})
    send(stack, voice_update(fake_telegram, 1, video_note(1.0, title="look at this rash"), kind="video_note"))
    wait_for(lambda: fake_telegram.sent_texts(USER), what="the answer")
    assert ocs_messages(stack) == ["[voice message] look at this rash"]
    (call,) = fake_speech.calls("transcriptions")
    assert call.filename.endswith(".ogg") and not probe(call.data).has_video


def test_an_audio_file_with_a_caption_is_heard_after_the_caption(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack = build(fake_telegram, fake_speech, make_stack, speech={})
    mp3 = sine(1.0, fmt="mp3", codec="libmp3lame", rate=24_000, title="the recording")
    update = voice_update(fake_telegram, 1, mp3, kind="audio", mime_type="audio/mpeg", file_name="memo.mp3")
    update["message"]["caption"] = "From the nurse:"
    send(stack, update)
    wait_for(lambda: fake_telegram.sent_texts(USER), what="the answer")
    assert ocs_messages(stack) == ["From the nurse:\n[voice message] the recording"]
    (call,) = fake_speech.calls("transcriptions")
    assert call.filename == "memo.mp3" and call.data == mp3  # taken as it is


def test_without_speech_a_voice_note_gets_the_notice_and_nothing_reaches_ocs(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack = build(fake_telegram, fake_speech, make_stack)
    send(stack, voice_update(fake_telegram, 1, voice_note(0.5)))
    wait_for(lambda: fake_telegram.sent_texts(USER), what="the notice")
    assert fake_telegram.sent_texts(USER) == ["I can't listen to voice messages here yet — please type your question."]
    settled(stack.redis)
    assert stack.sim.state.list_sessions() == [] and fake_telegram.calls("getFile") == []


@pytest.mark.parametrize(("limit", "update_fields"), [
    ({"max_audio_bytes": 1000}, {"size": 50_000}),
    ({"max_audio_seconds": 60}, {"duration": 600}),
], ids=["too large", "too long"])
def test_a_voice_note_over_a_limit_is_refused_before_any_byte_is_fetched(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack],
    limit: dict[str, Any], update_fields: dict[str, Any],
) -> None:
    stack = build(fake_telegram, fake_speech, make_stack, speech=limit)
    send(stack, voice_update(fake_telegram, 1, voice_note(0.5), **update_fields))
    wait_for(lambda: fake_telegram.sent_texts(USER), what="the notice")
    assert fake_telegram.sent_texts(USER) == [stack.config.channels["tg"].voice_unheard_notice]
    assert fake_telegram.calls("getFile") == [] and fake_speech.calls() == []


def test_echo_transcript_is_sent_before_the_answer(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack = build(fake_telegram, fake_speech, make_stack, speech={}, echo_transcript=True, echo_template="I heard: {transcript}")
    send(stack, voice_update(fake_telegram, 1, voice_note(0.5, title="hello")))
    wait_for(lambda: len(fake_telegram.sent_texts(USER)) == 2, what="the echo and the answer")
    assert fake_telegram.sent_texts(USER) == ["I heard: hello", "Echo #1: [voice message] hello"]


def test_a_user_who_takes_no_voice_notes_still_gets_the_words(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    fake_telegram.voice_forbidden.add(USER)
    stack = build(fake_telegram, fake_speech, make_stack, speech={"voice_replies": "always"})
    send(stack, message_update(1, chat_id=USER, user_id=USER, text="hi"))
    wait_for(lambda: fake_telegram.calls("sendVoice"), what="the refused voice note")
    settled(stack.redis)
    assert fake_telegram.sent_texts(USER) == ["Echo #1: hi"] and fake_telegram.sent_voices(USER) == []
    assert stack.redis.zcard(Keys().dlq) == 0
    assert stack.worker is not None
    metrics = stack.worker.runner.services.metrics.registry
    assert metrics.get_sample_value("ocsgw_voice_replies_total", {"bot": "demo", "outcome": "undeliverable"}) == 1


def test_a_voice_note_telegram_throttles_is_posted_again_without_speaking_it_again(
    fake_telegram: FakeTelegram, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    fake_telegram.rate_limit_next("sendVoice", retry_after=1)
    stack = build(fake_telegram, fake_speech, make_stack, speech={"voice_replies": "always"})
    send(stack, message_update(1, chat_id=USER, user_id=USER, text="hi"))
    wait_for(lambda: fake_telegram.sent_voices(USER), what="the voice reply after the wait")
    settled(stack.redis)
    assert [c.status for c in fake_telegram.calls("sendVoice")] == [429, 200]
    assert len(fake_speech.calls("speech")) == 1  # kept for the retry, not spoken twice
    assert stack.redis.keys("ocsgw:voice:*") == []  # and gone once posted
