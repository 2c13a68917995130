"""Voice end to end on the webhook channel (docs/VOICE.md): a user's voice note reaches OCS as its
words, the answer comes back as a voice note too where the bot says so, and every fault of the
speech service ends the way the issue asks: retried within the turn's attempts, then parked so
that a replay answers once; a refused key answered with the notice and no retry storm; limits
refused before the bytes come. The fake speech service (tests/fakes/openai_audio.py) hears a
recording's ``title`` tag and writes what it speaks into its own."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.ocs.simulator import DEMO_CHATBOT_ID
from gateway.speech.audio import probe
from gateway.store.dead_letters import DeadLetterStage, DeadLetterStore
from tests.conftest import FAST_TUNING, WEBHOOK_SECRET, Stack, settled, wait_for
from tests.fakes.openai_audio import FakeOpenAIAudio, fake_speech
from tests.support.audio import title_of, voice_note
from tests.support.servers import UvicornThread

__all__ = ["fake_speech"]

KEY = "sk-test-speech-key-0123456789"


class AudioFiles:
    """A file host for the webhook users' recordings; counts what was fetched."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fetched: list[str] = []
        self._server = UvicornThread(Starlette(routes=[Route("/{name}", self._serve)]))
        self.url = ""

    async def _serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.fetched.append(name)
        if name not in self.files:
            return Response("gone", status_code=404)
        return Response(self.files[name], media_type="audio/ogg")

    def add(self, name: str, data: bytes) -> dict[str, str]:
        """A webhook attachment for ``data`` served as ``name``."""
        self.files[name] = data
        return {"url": f"{self.url}/{name}", "content_type": "audio/ogg", "name": name}


@pytest.fixture
def audio_files() -> Iterator[AudioFiles]:
    files = AudioFiles()
    files.url = files._server.start()
    yield files
    files._server.stop()


def speech(fake: FakeOpenAIAudio, **settings: Any) -> dict[str, Any]:
    return {"base_url": fake.base_url, "api_key": Secret(KEY), **settings}


@pytest.fixture
def voice_stack(
    fake_speech: FakeOpenAIAudio, audio_files: AudioFiles, make_stack: Callable[..., Stack]
) -> Callable[..., Stack]:
    def build(*, channel: dict[str, Any] | None = None, worker: dict[str, Any] | None = None, **settings: Any) -> Stack:
        overrides: dict[str, Any] = {"fetch_allowlist": (audio_files.url.removeprefix("http://"),)}
        if settings.pop("no_speech", False) is False:
            overrides["bots"] = {"demo": {"speech": speech(fake_speech, **settings)}}
        if channel:
            overrides["channels"] = {"hooks": channel}
        if worker:
            overrides["worker"] = worker
        return make_stack(**overrides)

    return build


def say_voice(stack: Stack, files: AudioFiles, conversation: str, words: str, *, text: str = "", seconds: float = 1.0) -> None:
    attachment = files.add(f"{conversation}-{len(files.files)}.ogg", voice_note(seconds, title=words))
    response = stack.say(conversation, text, extra={"attachments": [attachment]})
    assert response.status_code == 200, response.text


def sent_to_ocs(stack: Stack) -> list[str]:
    return [m for session in stack.sim.state.list_sessions() for m in stack.sim.state.user_messages(session.id)]


def metric(stack: Stack, name: str, **labels: str) -> float:
    assert stack.worker is not None
    value = stack.worker.runner.services.metrics.registry.get_sample_value(name, {"bot": "demo", **labels})
    return value or 0.0


# -- in as words ---------------------------------------------------------------------------------


def test_a_voice_note_reaches_ocs_as_its_words_after_the_marker(voice_stack: Callable[..., Stack],
                                                                 audio_files: AudioFiles, fake_speech: FakeOpenAIAudio) -> None:
    stack = voice_stack()
    say_voice(stack, audio_files, "c1", "my child has a fever", seconds=1.5)
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert sent_to_ocs(stack) == ["[voice message] my child has a fever"]
    assert stack.receiver.texts("c1") == ["Echo #1: [voice message] my child has a fever"]
    assert stack.sim.state.uploaded_files() == []  # the words went, never the audio
    (call,) = fake_speech.calls("transcriptions")
    assert call.filename.endswith(".ogg") and call.fields["model"] == "whisper-1"
    assert metric(stack, "ocsgw_transcriptions_total", outcome="ok") == 1
    assert metric(stack, "ocsgw_audio_seconds_total", direction="in") == pytest.approx(1.5, abs=0.1)
    assert metric(stack, "ocsgw_speech_api_seconds_count", call="transcribe") == 1


def test_typed_words_come_first_and_the_voice_notes_words_after_them(voice_stack: Callable[..., Stack],
                                                                     audio_files: AudioFiles) -> None:
    stack = voice_stack()
    say_voice(stack, audio_files, "c1", "and she is three", text="About my daughter:")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert sent_to_ocs(stack) == ["About my daughter:\n[voice message] and she is three"]


def test_echo_transcript_shows_the_user_what_was_heard_before_the_answer(voice_stack: Callable[..., Stack],
                                                                          audio_files: AudioFiles) -> None:
    stack = voice_stack(channel={"echo_transcript": True})
    say_voice(stack, audio_files, "c1", "where is the clinic")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the echo and the answer")
    echo, answer = stack.receiver.received
    assert echo["text"] == "🎤 “where is the clinic”" and echo["kind"] == "notice"
    assert answer["text"] == "Echo #1: [voice message] where is the clinic"
    settled(stack.redis)
    assert len(stack.receiver.received) == 2


# -- without a speech service --------------------------------------------------------------------


def test_without_a_speech_block_a_voice_note_gets_the_notice_and_nothing_reaches_ocs(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles
) -> None:
    stack = voice_stack(no_speech=True, channel={"voice_notice": "Please type: I cannot listen yet."})
    say_voice(stack, audio_files, "c1", "hello?")
    wait_for(lambda: stack.receiver.texts("c1"), what="the notice")
    assert stack.receiver.texts("c1") == ["Please type: I cannot listen yet."]
    settled(stack.redis)
    assert stack.sim.state.list_sessions() == [] and audio_files.fetched == []
    assert metric(stack, "ocsgw_transcriptions_total", outcome="unconfigured") == 1


def test_without_a_speech_block_the_words_beside_a_voice_note_still_reach_ocs_after_the_notice(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles
) -> None:
    stack = voice_stack(no_speech=True)
    say_voice(stack, audio_files, "c1", "unheard", text="Opening hours?")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the notice and the answer")
    assert stack.receiver.texts("c1") == [
        "I can't listen to voice messages here yet — please type your question.", "Echo #1: Opening hours?",
    ]
    assert sent_to_ocs(stack) == ["Opening hours?"]


# -- back as voice -------------------------------------------------------------------------------


def _voice_part(received: dict[str, Any]) -> bytes:
    (attachment,) = received["attachments"]
    assert attachment["voice"] is True and attachment["content_type"] == "audio/ogg"
    return base64.b64decode(attachment["content_base64"])


def test_reciprocal_answers_a_voice_note_with_the_words_then_a_voice_note(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio
) -> None:
    stack = voice_stack(voice_replies="reciprocal", voice="nova")
    say_voice(stack, audio_files, "c1", "is it open today")
    wait_for(lambda: len(stack.receiver.received) == 2, what="the written answer and the voice reply")
    words, spoken = stack.receiver.received
    assert words["text"] == "Echo #1: [voice message] is it open today" and (words["part"], words["parts"]) == (1, 2)
    assert spoken["text"] == "" and (spoken["part"], spoken["parts"]) == (2, 2)
    audio = _voice_part(spoken)
    assert (probe(audio).container, probe(audio).codec) == ("ogg", "opus")
    assert title_of(audio) == "Echo #1: [voice message] is it open today"  # what was spoken
    (call,) = fake_speech.calls("speech")
    assert call.fields["voice"] == "nova" and call.fields["response_format"] == "opus"
    assert metric(stack, "ocsgw_voice_replies_total", outcome="ok") == 1
    assert metric(stack, "ocsgw_audio_seconds_total", direction="out") > 0
    # A typed message is answered in writing only.
    stack.say("c1", "thanks")
    wait_for(lambda: len(stack.receiver.received) == 3, what="the typed answer")
    settled(stack.redis)
    assert [r["text"] for r in stack.receiver.received[2:]] == ["Echo #2: thanks"]
    assert len(fake_speech.calls("speech")) == 1


def test_always_speaks_answers_to_typed_messages_and_markdown_is_read_as_words(
    voice_stack: Callable[..., Stack], fake_speech: FakeOpenAIAudio
) -> None:
    stack = voice_stack(voice_replies="always")
    stack.say("c1", "**Bold** and [a link](https://example.com)")
    wait_for(lambda: len(stack.receiver.received) == 2, what="words and voice")
    (call,) = fake_speech.calls("speech")
    assert call.fields["input"] == "Echo #1: Bold and a link"


def test_a_speech_service_that_answers_another_format_is_converted(
    voice_stack: Callable[..., Stack], fake_speech: FakeOpenAIAudio
) -> None:
    fake_speech.speech_format_override = "wav"
    stack = voice_stack(voice_replies="always")
    stack.say("c1", "hi")
    wait_for(lambda: len(stack.receiver.received) == 2, what="words and voice")
    audio = _voice_part(stack.receiver.received[1])
    assert (probe(audio).container, probe(audio).codec) == ("ogg", "opus")


def test_a_failing_voice_reply_is_retried_then_left_out_and_the_words_stay(
    voice_stack: Callable[..., Stack], fake_speech: FakeOpenAIAudio
) -> None:
    fake_speech.fail_next("speech", 503, times=99, retry_after=0)
    stack = voice_stack(voice_replies="always")
    stack.say("c1", "hello")
    wait_for(lambda: metric(stack, "ocsgw_voice_replies_total", outcome="unavailable") == 3, what="three tries")
    settled(stack.redis)
    assert stack.receiver.texts("c1") == ["Echo #1: hello"] and len(stack.receiver.received) == 1
    assert stack.redis.zcard(Keys().dlq) == 0  # the answer was delivered: nothing to park


def test_a_voice_reply_the_speech_service_rate_limits_waits_and_then_goes(
    voice_stack: Callable[..., Stack], fake_speech: FakeOpenAIAudio
) -> None:
    fake_speech.fail_next("speech", 429, retry_after=1)
    stack = voice_stack(voice_replies="always")
    stack.say("c1", "hello")
    wait_for(lambda: len(stack.receiver.received) == 2, what="words, then voice after the wait")
    first, second = (c.at for c in fake_speech.calls("speech"))
    assert second - first >= 1.0  # Retry-After honoured
    assert metric(stack, "ocsgw_voice_replies_total", outcome="rate_limited") == 1


# -- faults of the speech service ----------------------------------------------------------------


def test_a_429_from_the_speech_service_is_retried_after_its_wait_and_answered_once(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio
) -> None:
    fake_speech.fail_next("transcriptions", 429, retry_after=1, message="Rate limit reached")
    stack = voice_stack()
    say_voice(stack, audio_files, "c1", "are you there")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    refused, heard = fake_speech.calls("transcriptions")
    assert (refused.status, heard.status) == (429, 200) and heard.at - refused.at >= 1.0
    assert sent_to_ocs(stack) == ["[voice message] are you there"]
    assert metric(stack, "ocsgw_transcriptions_total", outcome="rate_limited") == 1


def test_a_slow_speech_service_is_cut_off_at_its_bound_and_tried_again(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio
) -> None:
    fake_speech.slow_next(3.0)
    stack = voice_stack(timeout_s=0.5)
    say_voice(stack, audio_files, "c1", "slowly")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert fake_speech.arrived("transcriptions") == 2
    assert sent_to_ocs(stack) == ["[voice message] slowly"]


def test_a_speech_service_down_for_good_parks_the_turn_and_a_replay_transcribes_and_answers_once(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio
) -> None:
    fake_speech.fail_next("transcriptions", 500, times=1000, retry_after=0)
    stack = voice_stack()
    say_voice(stack, audio_files, "c1", "please answer")
    wait_for(lambda: stack.receiver.texts("c1"), what="the failure notice")
    assert stack.receiver.texts("c1") == [stack.config.channels["hooks"].failure_notice]
    assert len(fake_speech.calls("transcriptions")) == FAST_TUNING["max_attempts"]
    settled(stack.redis)
    assert stack.sim.state.list_sessions() == []  # nothing reached OCS
    fake_speech._failures.clear()  # the service is back

    async def replay() -> None:
        redis = aioredis.Redis.from_url(stack.redis_url)
        try:
            store = DeadLetterStore(redis, Keys())
            (letter,) = await store.list()
            assert letter.stage is DeadLetterStage.OCS
            assert "audio" in letter.inbound and "please answer" not in letter.inbound  # the audio's reference
            # Back in the inbox and the active set: the sweeper adopts it (no wake-up needed).
            assert await store.replay(letter.id) is not None
        finally:
            await redis.aclose()

    asyncio.run(replay())
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the replayed answer")
    settled(stack.redis)
    assert sent_to_ocs(stack) == ["[voice message] please answer"]
    assert stack.receiver.texts("c1")[1] == "Echo #1: [voice message] please answer"


def test_a_refused_key_gets_the_notice_one_log_line_and_no_retry_storm(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_speech.api_keys = {"sk-the-right-one-is-elsewhere"}
    stack = voice_stack()
    for conversation in ("c1", "c2", "c3"):
        say_voice(stack, audio_files, conversation, "hello")
    for conversation in ("c1", "c2", "c3"):
        wait_for(lambda conversation=conversation: stack.receiver.texts(conversation), what="the notice")  # type: ignore[misc]
        assert stack.receiver.texts(conversation) == [stack.config.channels["hooks"].voice_notice]
    settled(stack.redis)
    assert len(fake_speech.calls("transcriptions")) == 1  # one refusal; the others not asked
    assert metric(stack, "ocsgw_transcriptions_total", outcome="auth_failed") == 3
    assert stack.sim.state.list_sessions() == [] and stack.redis.zcard(Keys().dlq) == 0
    lines = [r.getMessage() for r in caplog.records if "bots.demo.speech" in r.getMessage() and r.levelname == "ERROR"]
    assert len(lines) == 1 and KEY not in caplog.text


# -- limits --------------------------------------------------------------------------------------


def test_a_voice_note_over_the_size_limit_is_cut_off_and_refused_with_a_notice(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio
) -> None:
    stack = voice_stack(max_audio_bytes=2000)
    say_voice(stack, audio_files, "c1", "a long story", seconds=3.0)  # ~20 KB
    wait_for(lambda: stack.receiver.texts("c1"), what="the notice")
    assert stack.receiver.texts("c1") == [stack.config.channels["hooks"].voice_unheard_notice]
    assert fake_speech.calls() == [] and stack.sim.state.list_sessions() == []
    assert metric(stack, "ocsgw_transcriptions_total", outcome="unfetched") == 1


def test_a_voice_note_over_the_length_limit_is_refused_with_a_notice(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio
) -> None:
    stack = voice_stack(max_audio_seconds=2)
    say_voice(stack, audio_files, "c1", "on and on", seconds=3.0)
    wait_for(lambda: stack.receiver.texts("c1"), what="the notice")
    assert stack.receiver.texts("c1") == [stack.config.channels["hooks"].voice_unheard_notice]
    assert fake_speech.calls() == []
    assert metric(stack, "ocsgw_transcriptions_total", outcome="too_long") == 1


def test_a_file_that_is_not_audio_is_refused_with_a_notice(voice_stack: Callable[..., Stack],
                                                           audio_files: AudioFiles, fake_speech: FakeOpenAIAudio) -> None:
    stack = voice_stack()
    attachment = audio_files.add("fake.ogg", b"this is not a recording")
    stack.say("c1", "", extra={"attachments": [attachment]})
    wait_for(lambda: stack.receiver.texts("c1"), what="the notice")
    assert stack.receiver.texts("c1") == [stack.config.channels["hooks"].voice_unheard_notice]
    assert fake_speech.calls() == [] and metric(stack, "ocsgw_transcriptions_total", outcome="unreadable") == 1


# -- exactly once --------------------------------------------------------------------------------


def _worker_process(stack: Stack, tmp_path: Path, fake: FakeOpenAIAudio, files: AudioFiles) -> subprocess.Popen[bytes]:
    config = tmp_path / "gateway.yaml"
    tuning = "".join(f"  {k}: {v}\n" for k, v in FAST_TUNING.items())
    config.write_text(
        f"redis_url: {stack.redis_url}\n"
        f"fetch_allowlist: ['{files.url.removeprefix('http://')}']\n"
        f"bots:\n  demo:\n    base_url: {stack.sim.url}\n    chatbot_id: {DEMO_CHATBOT_ID}\n"
        "    client_id: demo-client\n    client_secret: ${DEMO_SECRET}\n    task_timeout_s: 20\n"
        f"    speech:\n      base_url: {fake.base_url}\n      api_key: ${{SPEECH_KEY}}\n"
        "channels:\n  hooks:\n    type: webhook\n    bot: demo\n    secret: ${HOOK_SECRET}\n"
        f"    callback_url: {stack.config.channels['hooks'].callback_url}\n"
        f"worker:\n{tuning}"
    )
    env = {**os.environ, "DEMO_SECRET": "demo-secret", "HOOK_SECRET": WEBHOOK_SECRET, "SPEECH_KEY": KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--config", str(config), "worker"],
        env=env, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_a_worker_killed_mid_transcription_leaves_a_turn_that_transcribes_again_and_sends_once(
    voice_stack: Callable[..., Stack], audio_files: AudioFiles, fake_speech: FakeOpenAIAudio, tmp_path: Path
) -> None:
    stack = voice_stack(worker=None)
    stack.stop_worker()  # the subprocess workers below are the only ones
    fake_speech.slow_next(6.0)  # longer than the kill takes; over before the fake stops
    doomed = _worker_process(stack, tmp_path, fake_speech, audio_files)
    try:
        say_voice(stack, audio_files, "c1", "survive this")
        wait_for(lambda: fake_speech.arrived("transcriptions") == 1, timeout=30, what="the transcription to start")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    assert stack.redis.hget("ocsgw:turn:hooks/c1", "voice") in (None, b"")  # nothing was heard yet
    survivor = _worker_process(stack, tmp_path, fake_speech, audio_files)
    try:
        wait_for(lambda: stack.receiver.texts("c1"), timeout=30, what="the answer from the second worker")
        stack.say("c1", "still one?")
        wait_for(lambda: len(stack.receiver.texts("c1")) >= 2, timeout=30, what="the next answer")
        assert stack.receiver.texts("c1") == ["Echo #1: [voice message] survive this", "Echo #2: still one?"]
        assert sent_to_ocs(stack) == ["[voice message] survive this", "still one?"]
        assert fake_speech.arrived("transcriptions") == 2
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=30)
