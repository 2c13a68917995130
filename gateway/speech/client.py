"""An async client for an OpenAI-compatible audio API (docs/VOICE.md#the-speech-api): speech to
text (``POST {base_url}/audio/transcriptions``, multipart) and text to speech (``POST
{base_url}/audio/speech``, JSON), on the process's pooled ``httpx.AsyncClient``.

Every call is bounded as a whole (``speech.timeout_s``, the answer's last byte included: httpx's
own timeouts bound each read, so a server that drips bytes would pass them) and its answer in
size. Failures come out as ``gateway.core.errors`` speech errors, keeping the cause: a 5xx, 429
(with its ``Retry-After``), timeout or broken connection is ``SpeechUnavailable`` (the turn
retries within its attempts), 401/403 is ``SpeechAuthFailed``, any other 4xx
``SpeechRejected``. A refused key is not asked again for ``AUTH_PAUSE_S``: every voice note in
that while is answered without a call, and the operator gets one log line per pause, not one
per message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import httpx

from gateway.core.config import SpeechConfig
from gateway.core.errors import SpeechAuthFailed, SpeechRejected, SpeechUnavailable
from gateway.core.metrics import Metrics
from gateway.speech.audio import SpeechFile

__all__ = ["AUTH_PAUSE_S", "SpeechClient", "retry_after_s"]

log = logging.getLogger(__name__)

#: After a 401/403, this process asks the service again only this much later.
AUTH_PAUSE_S = 60.0
#: The wait after a 429 that names none; other failures that name none leave the wait to the
#: turn's own backoff (``worker.backoff_base_s``…).
DEFAULT_RETRY_S = 5.0
#: The longest ``Retry-After`` honoured as given; a longer one is cut to this.
MAX_RETRY_S = 600.0
#: The largest answer read: a transcript is text, spoken audio of 4,096 characters a few MB.
_MAX_ANSWER_BYTES = 32 * 1024 * 1024

SpeechCall = Literal["transcribe", "synthesize"]


def retry_after_s(headers: Mapping[str, str], default: float = DEFAULT_RETRY_S) -> float:
    """``Retry-After`` in seconds (a number or an HTTP date), at most ``MAX_RETRY_S``; ``default``
    when absent or unreadable."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_S)


class SpeechClient:
    """One bot's speech service.

    Parameters:
        name: the bot's name in the config (metrics and log lines name ``bots.<name>.speech``).
        config: its ``speech`` block.
        http: the process's pooled client (never closed here).
        metrics: where ``ocsgw_speech_api_seconds`` is observed.
        clock: monotonic seconds (tests move it).
    """

    def __init__(
        self,
        *,
        name: str,
        config: SpeechConfig,
        http: httpx.AsyncClient,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.metrics = metrics
        self._http = http
        self._clock = clock
        self._refused: tuple[float, int] | None = None  # (until, status) after a 401/403

    async def transcribe(self, audio: SpeechFile) -> str:
        """The words spoken in ``audio`` ("" for silence).

        Raises:
            SpeechUnavailable / SpeechAuthFailed / SpeechRejected: as the module says.
        """
        form: dict[str, str] = {"model": self.config.transcription_model, "response_format": "json"}
        if self.config.language:
            form["language"] = self.config.language
        if self.config.prompt:
            form["prompt"] = self.config.prompt
        files = {"file": (audio.name, audio.data, audio.content_type)}
        response, body = await self._call("transcribe", "/audio/transcriptions", data=form, files=files)
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                parsed = json.loads(body) if body else {}
            except ValueError:
                raise SpeechUnavailable(0.0, "the transcription answer is not JSON") from None
            text = parsed.get("text") if isinstance(parsed, dict) else None
            if not isinstance(text, str):
                raise SpeechRejected(response.status_code, "the transcription answer has no text")
            return text.strip()
        return body.decode("utf-8", errors="replace").strip()  # a server that answers plain text

    async def synthesize(self, text: str, *, response_format: Literal["opus", "mp3"]) -> bytes:
        """``text`` spoken in the configured voice, as ``response_format`` audio (the service may
        still answer another format: the caller probes it).

        Raises:
            SpeechUnavailable / SpeechAuthFailed / SpeechRejected: as the module says.
        """
        payload = {
            "model": self.config.speech_model, "input": text, "voice": self.config.voice,
            "response_format": response_format,
        }
        _, body = await self._call("synthesize", "/audio/speech", json=payload)
        if not body:
            raise SpeechUnavailable(0.0, "the speech service answered no audio")
        return body

    # -- one request ----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = self.config.api_key
        if key is None:
            return {}
        if self.config.api_key_header == "api-key":
            return {"api-key": key.reveal()}
        return {"Authorization": f"Bearer {key.reveal()}"}

    async def _call(self, call: SpeechCall, path: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
        refused = self._refused
        if refused is not None and self._clock() < refused[0]:
            raise SpeechAuthFailed(self.name, refused[1])
        url = f"{self.config.base_url}{path}"
        params = {"api-version": self.config.api_version} if self.config.api_version else None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self._http.stream(
                    "POST", url, headers=self._headers(), params=params, timeout=self.config.timeout_s, **kwargs
                ) as response:
                    body = await _read(response)
        except TimeoutError:
            raise SpeechUnavailable(0.0, f"{call}: no answer within {self.config.timeout_s:g} s") from None
        except httpx.TimeoutException as exc:
            raise SpeechUnavailable(0.0, f"{call}: timed out") from exc
        except httpx.TransportError as exc:
            raise SpeechUnavailable(0.0, f"{call}: {type(exc).__name__}") from exc
        finally:
            if self.metrics is not None:
                self.metrics.speech_api_seconds.labels(self.name, call).observe(time.perf_counter() - started)
        status = response.status_code
        if status < 400:
            self._refused = None
            return response, body
        message = _error_message(response, body)
        if status == 429:
            raise SpeechUnavailable(retry_after_s(response.headers), f"{call}: HTTP 429 {message}", rate_limited=True)
        if status >= 500:
            raise SpeechUnavailable(retry_after_s(response.headers, 0.0), f"{call}: HTTP {status} {message}")
        if status in (401, 403):
            if refused is None or self._clock() >= refused[0]:
                log.error(
                    "the speech service refused the key of bots.%s.speech (HTTP %d: %s); voice notes get the "
                    "voice_notice until it is fixed (next try in %.0f s)", self.name, status, message, AUTH_PAUSE_S,
                )
            self._refused = (self._clock() + AUTH_PAUSE_S, status)
            raise SpeechAuthFailed(self.name, status)
        raise SpeechRejected(status, message)


async def _read(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data.extend(chunk)
        if len(data) > _MAX_ANSWER_BYTES:
            raise SpeechRejected(response.status_code, f"the answer is larger than {_MAX_ANSWER_BYTES} bytes")
    return bytes(data)


def _error_message(response: httpx.Response, body: bytes) -> str:
    """OpenAI's ``{"error": {"message": …}}``, another JSON body's ``detail``, or the text, cut short."""
    text = body.decode("utf-8", errors="replace")
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            parsed = json.loads(body)
        except ValueError:
            return text[:200]
        if isinstance(parsed, dict):
            error = parsed.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return str(error["message"])[:200]
            if isinstance(error, str):
                return error[:200]
            if isinstance(parsed.get("detail"), str):
                return str(parsed["detail"])[:200]
    return text[:200]
