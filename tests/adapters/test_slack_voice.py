"""Voice on Slack end to end (docs/VOICE.md): an audio clip (``subtype: slack_audio``, however
its type is given) or an audio file share is heard; the answer's voice is an MP3 file in the
thread after the written answer; without speech the clip gets the notice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core.config import Secret
from gateway.speech.audio import probe
from tests.adapters.test_slack_e2e import deliver, dm, mention, ocs_messages, slack_channel
from tests.conftest import Stack, settled, wait_for
from tests.fakes.openai_audio import FakeOpenAIAudio, fake_speech
from tests.fakes.slack_api import FakeSlack, Workspace, fake_slack
from tests.support.audio import sine, title_of

__all__ = ["fake_slack", "fake_speech"]

KEY = "sk-test-speech-key-0123456789"


def build(fake_slack: FakeSlack, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack], *,
          speech: dict[str, Any] | None = None) -> tuple[Stack, Workspace]:
    ws = fake_slack.add_workspace("T100")
    bots: dict[str, Any] = {}
    if speech is not None:
        bots = {"demo": {"speech": {"base_url": fake_speech.base_url, "api_key": Secret(KEY), **speech}}}
    return make_stack(bots=bots, channels={"sl": slack_channel(fake_slack, bot_token=Secret(ws.token))}), ws


def clip(fake_slack: FakeSlack, words: str) -> dict[str, Any]:
    """An audio clip as Slack's desktop client records it: WebM/Opus, typed as video, marked slack_audio."""
    data = sine(1.0, fmt="webm", codec="libopus", title=words)
    return fake_slack.add_file("T100", "audio_message.webm", data, mimetype="video/webm", subtype="slack_audio",
                               duration_ms=1000)


def test_an_audio_clip_is_heard_and_answered_in_the_thread_in_words_then_voice(
    fake_slack: FakeSlack, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack, ws = build(fake_slack, fake_speech, make_stack, speech={"voice_replies": "reciprocal"})
    envelope = mention(ws, "", ts="1700000001.000100", event_id="Ev1", subtype="file_share", files=[clip(fake_slack, "is the clinic open")])
    assert deliver(stack, envelope).status_code == 200
    wait_for(lambda: fake_slack.shared_files, what="the voice reply")
    assert ocs_messages(stack) == ["[voice message] is the clinic open"]
    (call,) = fake_speech.calls("transcriptions")
    assert call.filename == "audio_message.webm"  # WebM/Opus is on the speech API's list: sent as it is
    assert fake_slack.texts(channel="C100") == ["Echo #1: [voice message] is the clinic open"]
    (shared,) = fake_slack.shared_files
    assert shared.thread_ts == "1700000001.000100" and shared.filename == "answer.mp3" and shared.title == "Voice reply"
    assert probe(shared.data).container == "mp3" and title_of(shared.data) == "Echo #1: [voice message] is the clinic open"
    (spoken,) = fake_speech.calls("speech")
    assert spoken.fields["response_format"] == "mp3"


def test_an_audio_file_share_in_a_dm_is_heard(
    fake_slack: FakeSlack, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack, ws = build(fake_slack, fake_speech, make_stack, speech={})
    item = fake_slack.add_file("T100", "memo.m4a", sine(1.0, fmt="mp4", codec="aac", rate=16_000, title="call me back"),
                               mimetype="audio/mp4")
    assert deliver(stack, dm(ws, "see this", ts="1700000002.000100", event_id="Ev2", subtype="file_share", files=[item])).status_code == 200
    wait_for(lambda: fake_slack.texts(channel="D100"), what="the answer")
    assert ocs_messages(stack) == ["see this\n[voice message] call me back"]
    assert stack.sim.state.uploaded_files() == []


def test_without_speech_an_audio_clip_gets_the_notice(
    fake_slack: FakeSlack, fake_speech: FakeOpenAIAudio, make_stack: Callable[..., Stack]
) -> None:
    stack, ws = build(fake_slack, fake_speech, make_stack)
    envelope = dm(ws, "", ts="1700000003.000100", event_id="Ev3", subtype="file_share", files=[clip(fake_slack, "hello")])
    assert deliver(stack, envelope).status_code == 200
    wait_for(lambda: fake_slack.texts(channel="D100"), what="the notice")
    settled(stack.redis)
    assert fake_slack.texts(channel="D100") == ["I can't listen to voice messages here yet — please type your question."]
    assert stack.sim.state.list_sessions() == [] and fake_speech.calls() == []
