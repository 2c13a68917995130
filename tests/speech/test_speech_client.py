"""The speech client against the fake OpenAI-compatible audio service: what it sends (multipart
fields, auth header, JSON), what it makes of each answer, and that every fault comes out as the
error the engine handles (retry after the service's wait, stop asking a refused key)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.core.config import Secret, SpeechConfig
from gateway.core.errors import SpeechAuthFailed, SpeechRejected, SpeechUnavailable
from gateway.core.metrics import Metrics
from gateway.speech.audio import for_transcription, probe
from gateway.speech.client import AUTH_PAUSE_S, SpeechClient, retry_after_s
from tests.fakes.openai_audio import FakeOpenAIAudio, fake_speech
from tests.support.audio import voice_note

__all__ = ["fake_speech"]

KEY = "sk-test-speech-key-0123456789"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _client(speech: FakeOpenAIAudio, http: httpx.AsyncClient, **overrides: object) -> SpeechClient:
    fields: dict[str, object] = {"base_url": speech.base_url, "api_key": Secret(KEY), **overrides}
    return SpeechClient(name="clinic", config=SpeechConfig.model_validate(fields), http=http, metrics=Metrics())


async def test_a_voice_note_is_sent_as_multipart_with_model_and_the_key_and_comes_back_as_its_words(
    fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient
) -> None:
    client = _client(fake_speech, http, language="sw", prompt="Ada, clinic")
    audio = for_transcription(voice_note(1.0, title="habari, nina homa"), "voice_AgAD.ogg")
    assert await client.transcribe(audio) == "habari, nina homa"
    (call,) = fake_speech.calls("transcriptions")
    assert call.status == 200 and call.auth == KEY
    assert call.fields == {"model": "whisper-1", "response_format": "json", "language": "sw", "prompt": "Ada, clinic"}
    assert call.filename == "voice_AgAD.ogg" and call.file_content_type == "audio/ogg" and call.data == audio.data


async def test_speech_is_asked_as_json_and_answers_audio_of_the_asked_format(
    fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient
) -> None:
    client = _client(fake_speech, http, speech_model="tts-1-hd", voice="nova")
    audio = await client.synthesize("Take two tablets a day.", response_format="opus")
    info = probe(audio)
    assert (info.container, info.codec) == ("ogg", "opus")
    (call,) = fake_speech.calls("speech")
    assert call.fields == {"model": "tts-1-hd", "input": "Take two tablets a day.", "voice": "nova", "response_format": "opus"}


async def test_azure_style_key_header_and_api_version_are_sent(fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient) -> None:
    client = _client(fake_speech, http, api_key_header="api-key", api_version="2025-03-01-preview")
    await client.transcribe(for_transcription(voice_note(0.5, title="hi"), "v.ogg"))
    (call,) = fake_speech.calls("transcriptions")
    assert call.auth == KEY and call.query == {"api-version": "2025-03-01-preview"}


async def test_a_429_is_unavailable_for_the_services_retry_after(fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient) -> None:
    fake_speech.fail_next("transcriptions", 429, retry_after=7, message="Rate limit reached for whisper-1")
    with pytest.raises(SpeechUnavailable) as caught:
        await _client(fake_speech, http).transcribe(for_transcription(voice_note(0.5), "v.ogg"))
    assert caught.value.retry_after_s == 7.0 and caught.value.rate_limited
    assert "Rate limit reached" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_5xx_is_unavailable(fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient, status: int) -> None:
    fake_speech.fail_next("speech", status)
    with pytest.raises(SpeechUnavailable) as caught:
        await _client(fake_speech, http).synthesize("hello", response_format="opus")
    assert not caught.value.rate_limited


async def test_a_slow_service_is_cut_off_at_the_calls_bound(fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient) -> None:
    fake_speech.latency_s = 5.0
    client = _client(fake_speech, http, timeout_s=0.3)
    with pytest.raises(SpeechUnavailable, match=r"no answer within 0\.3 s|timed out"):
        await client.transcribe(for_transcription(voice_note(0.5), "v.ogg"))
    (observed,) = [m for m in client.metrics.registry.collect() if m.name == "ocsgw_speech_api_seconds"]  # type: ignore[union-attr]
    count = next(s.value for s in observed.samples if s.name.endswith("_count") and s.labels["call"] == "transcribe")
    assert count == 1  # the failed call is timed too


async def test_a_refused_service_is_unavailable(http: httpx.AsyncClient) -> None:
    config = SpeechConfig(base_url="http://127.0.0.1:9/v1")  # nothing listens on the discard port
    with pytest.raises(SpeechUnavailable, match="ConnectError"):
        await SpeechClient(name="clinic", config=config, http=http).synthesize("hi", response_format="opus")


async def test_a_refused_key_fails_at_once_and_is_not_asked_again_for_a_while(
    fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    config = SpeechConfig(base_url=fake_speech.base_url, api_key=Secret("sk-wrong-key-for-this-test"))
    client = SpeechClient(name="clinic", config=config, http=http, clock=lambda: now[0])
    audio = for_transcription(voice_note(0.5), "v.ogg")
    for _ in range(3):
        with pytest.raises(SpeechAuthFailed, match=r"bots\.clinic\.speech"):
            await client.transcribe(audio)
    assert len(fake_speech.calls("transcriptions")) == 1  # no retry storm
    refusals = [r for r in caplog.records if "bots.clinic.speech" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelname == "ERROR"
    assert "sk-wrong-key-for-this-test" not in caplog.text
    now[0] += AUTH_PAUSE_S + 1
    fake_speech.api_keys.add("sk-wrong-key-for-this-test")  # the operator fixed it
    assert await client.transcribe(audio) == "0.5 seconds of sound"


async def test_a_missing_key_is_refused_like_a_wrong_one(fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient) -> None:
    client = SpeechClient(name="clinic", config=SpeechConfig(base_url=fake_speech.base_url), http=http)
    with pytest.raises(SpeechAuthFailed):
        await client.synthesize("hi", response_format="opus")


async def test_an_unknown_model_or_format_is_rejected_for_good(fake_speech: FakeOpenAIAudio, http: httpx.AsyncClient) -> None:
    with pytest.raises(SpeechRejected, match="does not exist"):
        await _client(fake_speech, http, transcription_model="whisper-9").transcribe(for_transcription(voice_note(0.5), "v.ogg"))
    audio = for_transcription(voice_note(0.5), "v.ogg")
    renamed = type(audio)("v.amr", audio.content_type, audio.data, audio.duration_s)
    with pytest.raises(SpeechRejected, match="Invalid file format") as caught:
        await _client(fake_speech, http).transcribe(renamed)
    assert caught.value.status == 400


def test_retry_after_reads_seconds_and_dates_and_falls_back() -> None:
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_s({"retry-after": "soon"}, default=4.0) == 4.0
    assert retry_after_s({}, default=4.0) == 4.0
    assert retry_after_s({"retry-after": "86400"}) == 600.0
