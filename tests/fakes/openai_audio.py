"""A local fake of an OpenAI-compatible audio API, written from OpenAI's API reference for the
two endpoints the gateway calls (docs/VOICE.md#the-speech-api), under ``/v1``:

* ``POST /v1/audio/transcriptions`` — multipart ``file`` and ``model`` (required), ``language``,
  ``prompt``, ``response_format`` (``json`` default, ``text``, ``verbose_json``, ``srt``, ``vtt``).
  The file's extension must be one the API lists and its bytes real audio (the fake decodes them
  with PyAV, as the service does), at most 25 MB (413 past it).
* ``POST /v1/audio/speech`` — JSON ``{model, input, voice, response_format, speed}``; ``input``
  at most 4,096 characters; answers audio bytes in ``response_format`` (``mp3`` default, ``opus``
  in an Ogg container, ``aac``, ``flac``, ``wav``, ``pcm``).

Authentication is ``Authorization: Bearer <key>`` (or Azure's ``api-key`` header); errors are
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with its statuses: 401 for a missing
or wrong key, 400 for a bad request, 404 for an unknown model, 413 for a large file, 429 with
``Retry-After``, 5xx. What it "hears" is deterministic: a recording's ``title`` tag (the test
audio of ``tests/support/audio.py`` carries what it says there), else a line with its length.
What it speaks carries the spoken text in its own ``title`` tag, so a test can tell what a voice
reply says::

    with FakeOpenAIAudio(api_key="sk-test") as speech:
        speech.fail_next("transcriptions", 429, retry_after=2)
        speech.slow_next(5.0)                  # the next call answers 5 s late
        speech.latency_s = 0.5                 # every call does
        ...
        (call,) = speech.calls("transcriptions"); assert call.filename.endswith(".ogg")
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import av
import av.error
import pytest
from av.audio.stream import AudioStream
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support.audio import sine
from tests.support.servers import ServedApp

__all__ = ["FakeOpenAIAudio", "SpeechCall", "fake_speech"]

#: The extensions /audio/transcriptions takes (OpenAI's list).
SUPPORTED = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_INPUT_CHARS = 4096
TRANSCRIPTION_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper-large-v3"})
SPEECH_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"})
#: response_format → (muxer, encoder, content type) of the audio /audio/speech answers.
_SPEECH_FORMATS: dict[str, tuple[str, str, str]] = {
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/ogg"),
    "aac": ("adts", "aac", "audio/aac"),
    "flac": ("flac", "flac", "audio/flac"),
    "wav": ("wav", "pcm_s16le", "audio/wav"),
    "pcm": ("s16le", "pcm_s16le", "audio/pcm"),
}
_RATES = {"opus": 48_000, "mp3": 24_000}


@dataclass(frozen=True)
class SpeechCall:
    """One request as the fake received it; ``status`` is what it answered."""

    endpoint: str  # "transcriptions" or "speech"
    status: int
    auth: str
    fields: dict[str, str] = field(default_factory=dict)
    filename: str = ""
    file_content_type: str = ""
    data: bytes = b""
    query: dict[str, str] = field(default_factory=dict)
    at: float = 0.0


@dataclass
class _Failure:
    endpoint: str
    status: int
    times: int
    retry_after: str | None
    message: str


class FakeOpenAIAudio(ServedApp):
    """The fake service and its knobs; ``base_url`` is what a ``speech.base_url`` points at."""

    def __init__(self, *, api_key: str | None = "sk-test-speech-key-0123456789") -> None:
        self.api_keys: set[str] = {api_key} if api_key else set()
        #: Seconds every answer waits (a slow service).
        self.latency_s = 0.0
        #: When set, /audio/speech answers this format whatever was asked (a server that ignores it).
        self.speech_format_override: str | None = None
        self._calls: list[SpeechCall] = []
        self._failures: list[_Failure] = []
        self._slow: list[list[float]] = []  # [[seconds, times left], …] per endpoint order
        self._arrived: dict[str, int] = {"transcriptions": 0, "speech": 0}
        self._lock = threading.Lock()

    def start(self) -> Self:
        super().start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- knobs ----------------------------------------------------------------------------------

    def fail_next(self, endpoint: str, status: int, *, times: int = 1, retry_after: str | float | None = None,
                  message: str = "The server had an error while processing your request.") -> None:
        """Answer the next ``times`` calls of ``endpoint`` ("transcriptions" or "speech") with ``status``."""
        with self._lock:
            self._failures.append(_Failure(endpoint, status, times, None if retry_after is None else str(retry_after),
                                           message))

    def slow_next(self, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` calls (either endpoint) wait ``seconds`` before answering."""
        with self._lock:
            self._slow.append([seconds, float(times)])

    # -- assertions -----------------------------------------------------------------------------

    def arrived(self, endpoint: str) -> int:
        """Requests that reached ``endpoint``, counted on arrival (before any latency)."""
        with self._lock:
            return self._arrived[endpoint]

    def calls(self, endpoint: str | None = None, *, status: int | None = None) -> list[SpeechCall]:
        with self._lock:
            return [c for c in self._calls if (endpoint is None or c.endpoint == endpoint)
                    and (status is None or c.status == status)]

    # -- the server -----------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
            Route("/v1/audio/speech", self._speech, methods=["POST"]),
        ])

    def _auth(self, request: Request) -> tuple[str, Response | None]:
        header = request.headers.get("authorization", "")
        key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else request.headers.get("api-key", "")
        if not self.api_keys:
            return key, None
        if not key:
            return key, _error(401, "You didn't provide an API key. You need to provide your API key in an "
                                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if key not in self.api_keys:
            return key, _error(401, f"Incorrect API key provided: {key[:3]}***{key[-4:]}.", code="invalid_api_key")
        return key, None

    def _injected(self, endpoint: str) -> Response | None:
        with self._lock:
            for failure in self._failures:
                if failure.endpoint == endpoint and failure.times > 0:
                    failure.times -= 1
                    kind = "server_error" if failure.status >= 500 else "requests" if failure.status == 429 else "invalid_request_error"
                    headers = {"retry-after": failure.retry_after} if failure.retry_after is not None else {}
                    return _error(failure.status, failure.message, kind=kind, headers=headers)
        return None

    def _record(self, call: SpeechCall) -> None:
        with self._lock:
            self._calls.append(call)

    async def _delay(self, endpoint: str) -> None:
        with self._lock:
            self._arrived[endpoint] += 1
            wait = self.latency_s
            for slow in self._slow:
                if slow[1] > 0:
                    slow[1] -= 1
                    wait = max(wait, slow[0])
                    break
        if wait:
            await asyncio.sleep(wait)

    async def _transcriptions(self, request: Request) -> Response:
        await self._delay("transcriptions")
        key, refused = self._auth(request)
        query = dict(request.query_params)
        if refused is not None:
            self._record(SpeechCall("transcriptions", refused.status_code, key, query=query, at=time.time()))
            return refused
        body = await request.body()
        if len(body) > MAX_UPLOAD_BYTES:
            self._record(SpeechCall("transcriptions", 413, key, query=query, at=time.time()))
            return _error(413, f"Maximum content size limit ({MAX_UPLOAD_BYTES}) exceeded ({len(body)} bytes read)",
                          kind="server_error")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return self._answer(SpeechCall("transcriptions", 400, key, query=query, at=time.time()),
                                _error(400, "Invalid Content-Type header, expected multipart/form-data."))
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        upload = form.get("file")
        call = SpeechCall("transcriptions", 200, key, fields, query=query, at=time.time())
        if not isinstance(upload, UploadFile):
            return self._answer(call, _error(400, "Missing required parameter: 'file'.", param="file"))
        data = await upload.read()
        call = SpeechCall("transcriptions", 200, key, fields, upload.filename or "", upload.content_type or "", data,
                          query, time.time())
        if "model" not in fields:
            return self._answer(call, _error(400, "Missing required parameter: 'model'.", param="model"))
        if fields["model"] not in TRANSCRIPTION_MODELS:
            return self._answer(call, _error(404, f"The model `{fields['model']}` does not exist or you do not have "
                                                  "access to it.", code="model_not_found"))
        injected = self._injected("transcriptions")
        if injected is not None:
            return self._answer(call, injected)
        extension = (upload.filename or "").rsplit(".", 1)[-1].lower()
        if extension not in SUPPORTED:
            return self._answer(call, _error(400, f"Invalid file format. Supported formats: {list(SUPPORTED)}"))
        heard = _hear(data)
        if heard is None:
            return self._answer(call, _error(400, "Audio file might be corrupted or unsupported", param="file"))
        text, duration = heard
        response_format = fields.get("response_format", "json")
        if response_format == "text":
            return self._answer(call, PlainTextResponse(text + "\n"))
        if response_format == "verbose_json":
            return self._answer(call, JSONResponse({
                "task": "transcribe", "language": fields.get("language", "english"), "duration": round(duration, 2),
                "text": text, "segments": [{"id": 0, "start": 0.0, "end": round(duration, 2), "text": text}],
            }))
        if response_format in ("srt", "vtt"):
            return self._answer(call, PlainTextResponse(f"1\n00:00:00,000 --> 00:00:0{min(int(duration), 9)},000\n{text}\n"))
        if response_format != "json":
            return self._answer(call, _error(400, f"Invalid value for 'response_format': {response_format!r}.",
                                             param="response_format"))
        return self._answer(call, JSONResponse({"text": text}))

    async def _speech(self, request: Request) -> Response:
        await self._delay("speech")
        key, refused = self._auth(request)
        query = dict(request.query_params)
        if refused is not None:
            self._record(SpeechCall("speech", refused.status_code, key, query=query, at=time.time()))
            return refused
        try:
            payload = await request.json()
        except ValueError:
            return self._answer(SpeechCall("speech", 400, key, query=query, at=time.time()),
                                _error(400, "We could not parse the JSON body of your request."))
        fields = {k: str(v) for k, v in payload.items()} if isinstance(payload, dict) else {}
        call = SpeechCall("speech", 200, key, fields, query=query, at=time.time())
        for required in ("model", "input", "voice"):
            if required not in fields:
                return self._answer(call, _error(400, f"Missing required parameter: '{required}'.", param=required))
        if fields["model"] not in SPEECH_MODELS:
            return self._answer(call, _error(404, f"The model `{fields['model']}` does not exist.", code="model_not_found"))
        if fields["voice"] not in VOICES:
            return self._answer(call, _error(400, f"Invalid value for 'voice': {fields['voice']!r}.", param="voice"))
        text = str(payload["input"])
        if len(text) > MAX_INPUT_CHARS:
            return self._answer(call, _error(400, f"String too long. Expected a string with maximum length "
                                                  f"{MAX_INPUT_CHARS}, but got a string with length {len(text)} instead.",
                                             param="input", code="string_above_max_length"))
        injected = self._injected("speech")
        if injected is not None:
            return self._answer(call, injected)
        response_format = self.speech_format_override or fields.get("response_format", "mp3")
        if response_format not in _SPEECH_FORMATS:
            return self._answer(call, _error(400, f"Invalid value for 'response_format': {response_format!r}.",
                                             param="response_format"))
        muxer, encoder, content_type = _SPEECH_FORMATS[response_format]
        # A short tone, longer for a longer text; the text rides in its title tag.
        seconds = min(0.3 + len(text) * 0.005, 3.0)
        audio = sine(seconds, fmt=muxer, codec=encoder, rate=_RATES.get(response_format, 24_000), title=text[:200])
        return self._answer(call, Response(audio, media_type=content_type))

    def _answer(self, call: SpeechCall, response: Response) -> Response:
        self._record(SpeechCall(call.endpoint, response.status_code, call.auth, call.fields, call.filename,
                                call.file_content_type, call.data, call.query, call.at))
        return response


def _hear(data: bytes) -> tuple[str, float] | None:
    """The recording's ``title`` tag (or a line saying how long it is) and its length; None if
    the bytes are not audio."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            stream: AudioStream = container.streams.audio[0]
            samples = sum(frame.samples for frame in container.decode(stream))
            rate = stream.codec_context.sample_rate or 1
            title = stream.metadata.get("title") or container.metadata.get("title")
    except av.error.FFmpegError:
        return None
    duration = samples / rate
    return (title if title is not None else f"{duration:.1f} seconds of sound"), duration


def _error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@pytest.fixture
def fake_speech() -> Iterator[FakeOpenAIAudio]:
    """A running fake speech service (key ``sk-test-speech-key-0123456789``), stopped after the test."""
    with FakeOpenAIAudio() as fake:
        yield fake
