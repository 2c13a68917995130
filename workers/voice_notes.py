"""Voice notes in as words (docs/VOICE.md): before the send, each speech attachment of the turn's
message (``Attachment.spoken``: a voice note, an audio clip or file, a video note's sound) is
downloaded within the speech service's limits, converted only if the service would refuse it,
and transcribed; OCS gets the words after ``VOICE_MARKER``, never the audio.

What was heard is recorded on the turn (``Turn.voice``) before anything else happens, so a send
that is retried (OCS down, a session gone) reuses it; a worker killed mid-transcription leaves
nothing recorded, and the next owner transcribes again, then sends once as for any message.
A speech service that is down, slow or throttling raises ``SpeechUnavailable``: the step is
retried within the turn's attempts (honouring its ``Retry-After``), then the turn is parked with
its message, so a replay transcribes and answers once (``workers/failures.py``).

A note that cannot be heard (no speech service, a refused key, too long, too large, unreadable,
silent) gets a notice. When the message had nothing else, the notice is the whole answer and
nothing reaches OCS; otherwise the notices go first and the rest of the message goes on. The
notices and the echo of what was heard (``echo_transcript``) are sent before OCS is asked, each
recorded once out (``Heard.told``), so a crash repeats at most the one in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace

from gateway.core.errors import (
    AttachmentUnavailable,
    DeliveryRejected,
    RetryLater,
    SpeechAuthFailed,
    SpeechRejected,
    SpeechUnavailable,
)
from gateway.core.models import Attachment, Delivery, Inbound, Reply, ReplyKind, Route
from gateway.speech.audio import AudioUnreadable, for_transcription
from gateway.speech.client import SpeechClient
from gateway.store.ledger import Turn
from workers.context import WorkerServices
from workers.delivery import Deliverer
from workers.hold import Hold

__all__ = ["Heard", "VOICE_MARKER", "VoiceNotes", "heard_lines"]

log = logging.getLogger("ocsgw.turns")

#: What OCS reads before the words of a voice note (so the bot knows they were spoken).
VOICE_MARKER = "[voice message]"
#: Tries of a platform download that keeps failing before the note counts as unheard.
_DOWNLOAD_TRIES = 3


@dataclass(frozen=True, slots=True)
class Heard:
    """What the message's voice notes came to: the lines for OCS (``[voice message] …`` each),
    the notices for the user (notes that could not be heard) and the transcripts to echo; ``told``
    counts the notices and echoes already sent."""

    lines: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    echoes: tuple[str, ...] = ()
    told: int = 0
    #: For each of ``lines``, the place in the turn's batch of the message whose note it heard
    #: (``Turn.inbounds``; 0 in records from before bursts).
    at: tuple[int, ...] = ()

    @property
    def messages(self) -> tuple[str, ...]:
        """What the user is told before the answer, in order: why a note was not heard, then what was."""
        return (*dict.fromkeys(self.notices), *self.echoes)

    def to_json(self) -> str:
        return json.dumps(
            {"lines": self.lines, "notices": self.notices, "echoes": self.echoes, "told": self.told, "at": self.at},
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, raw: str) -> Heard:
        data = json.loads(raw)
        return cls(
            lines=tuple(data.get("lines", ())), notices=tuple(data.get("notices", ())),
            echoes=tuple(data.get("echoes", ())), told=int(data.get("told", 0)),
            at=tuple(int(i) for i in data.get("at", ())),
        )


def heard_lines(turn: Turn) -> dict[int, tuple[str, ...]]:
    """By the message's place in the turn's batch, the lines its voice notes came to (what OCS
    reads after that message's own text: ``batches.combine``)."""
    if not turn.voice:
        return {}
    heard = Heard.from_json(turn.voice)
    placed: dict[int, list[str]] = {}
    for n, line in enumerate(heard.lines):
        placed.setdefault(heard.at[n] if n < len(heard.at) else 0, []).append(line)
    return {index: tuple(lines) for index, lines in placed.items()}


def _has_more_than_speech(inbounds: tuple[Inbound, ...]) -> bool:
    return any(inbound.text.strip() or any(not a.spoken for a in inbound.attachments) for inbound in inbounds)


class VoiceNotes:
    def __init__(self, services: WorkerServices, delivery: Deliverer) -> None:
        self.services = services
        self.delivery = delivery

    async def hear(self, hold: Hold, turn: Turn) -> tuple[Turn, Reply | None]:
        """Hear the message's voice notes (once per turn) and tell the user what must be told
        first. Returns the turn, and the answer when nothing is left for OCS (the notices).

        Raises:
            SpeechUnavailable: the speech service failed; retry the step later.
            RetryLater: the platform's file download, or a notice's send, failed for now.
        """
        spoken = [(index, attachment) for index, inbound in enumerate(turn.inbounds) for attachment in inbound.attachments
                  if attachment.spoken]
        if not spoken:
            return turn, None
        if turn.voice:
            heard = Heard.from_json(turn.voice)
        else:
            turn = await self.delivery.show_working(hold, turn)  # transcribing takes a moment
            heard = await self._listen(hold, turn, spoken)
            turn, ops = self.services.ledger.update(hold.conv, turn, voice=heard.to_json())
            await hold.write(ops, turn=turn)
        if not heard.lines and not _has_more_than_speech(turn.inbounds):
            text = "\n\n".join(dict.fromkeys(heard.notices))
            return turn, Reply(text=text, kind=ReplyKind.NOTICE, in_reply_to=turn.last.event_id)
        return await self._tell(hold, turn, heard), None

    async def _listen(self, hold: Hold, turn: Turn, spoken: list[tuple[int, Attachment]]) -> Heard:
        channel = self.services.config.channels[hold.conv.channel]
        client = self.services.speech_for(hold.conv.channel)
        lines: list[str] = []
        at: list[int] = []
        notices: list[str] = []
        echoes: list[str] = []
        for index, attachment in spoken:
            if client is None:
                self._count(hold, "unconfigured")
                notices.append(channel.voice_notice)
                continue
            try:
                words = await self._transcribe(hold, turn, attachment, client, turn.inbounds[index].route)
            except SpeechAuthFailed:
                self._count(hold, "auth_failed")  # the client logged it, once per pause
                notices.append(channel.voice_notice)
                continue
            if words is None:
                notices.append(channel.voice_unheard_notice)
                continue
            lines.append(f"{VOICE_MARKER} {words}")
            at.append(index)
            if channel.echo_transcript:
                echoes.append(channel.echo_template.replace("{transcript}", words))
        return Heard(tuple(lines), tuple(notices), tuple(echoes), at=tuple(at))

    async def _transcribe(
        self, hold: Hold, turn: Turn, attachment: Attachment, client: SpeechClient, route: Route
    ) -> str | None:
        """The note's words, or None when it cannot be heard (counted and logged here).

        Raises:
            SpeechUnavailable, SpeechAuthFailed: from the service.
            RetryLater: the platform's download failed for now, and tries remain.
        """
        limits = client.config
        if attachment.size is not None and attachment.size > limits.max_audio_bytes:
            return self._unheard(hold, "too_large", f"{attachment.size} bytes, over speech.max_audio_bytes")
        if attachment.duration_s is not None and attachment.duration_s > limits.max_audio_seconds:
            return self._unheard(hold, "too_long", f"{attachment.duration_s:.0f} s, over speech.max_audio_seconds")
        adapter = self.services.adapters[hold.conv.channel]
        try:
            got = await adapter.download(attachment, route, max_bytes=limits.max_audio_bytes)
        except AttachmentUnavailable as exc:
            return self._unheard(hold, "unfetched", exc.reason)
        except RetryLater as exc:
            if turn.attempts + 1 < _DOWNLOAD_TRIES:
                raise
            return self._unheard(hold, "unfetched", f"still unavailable: {exc}")
        try:
            audio = await asyncio.to_thread(for_transcription, got.data, got.name)
        except AudioUnreadable as exc:
            return self._unheard(hold, "unreadable", str(exc))
        if audio.duration_s > limits.max_audio_seconds:
            return self._unheard(hold, "too_long", f"{audio.duration_s:.0f} s, over speech.max_audio_seconds")
        if audio.converted:
            log.info("voice note %s converted for the speech service", attachment.name)
        hold.lease.check()
        try:
            words = await client.transcribe(audio)
        except SpeechUnavailable as exc:
            self._count(hold, "rate_limited" if exc.rate_limited else "unavailable")
            raise
        except SpeechRejected as exc:
            return self._unheard(hold, "rejected", str(exc))
        if not words:
            return self._unheard(hold, "empty", "no words in it")
        self._count(hold, "ok")
        self.services.metrics.audio_seconds.labels(self._bot(hold), "in").inc(audio.duration_s)
        return words

    async def _tell(self, hold: Hold, turn: Turn, heard: Heard) -> Turn:
        """Send the notices and echoes not yet out, each recorded once it is."""
        adapter = self.services.adapters[hold.conv.channel]
        messages = heard.messages
        for index in range(heard.told, len(messages)):
            reply = Reply(text=messages[index], kind=ReplyKind.NOTICE, in_reply_to=turn.last.event_id)
            for number, part in enumerate(adapter.render(reply)):
                delivery = Delivery(id=f"{turn.id}.heard{index}.{number}")
                try:
                    await self.delivery.send_aside(hold, turn, part, delivery)
                except DeliveryRejected as exc:
                    log.warning("a voice notice was refused by the platform: %s", exc.reason)
            heard = replace(heard, told=index + 1)
            turn, ops = self.services.ledger.update(hold.conv, turn, voice=heard.to_json())
            await hold.write(ops, turn=turn)
        return turn

    def _unheard(self, hold: Hold, outcome: str, reason: str) -> str | None:
        """Count and log a note that cannot be heard; None, for ``_transcribe`` to return."""
        self._count(hold, outcome)
        log.info("voice note not heard (%s): %s", outcome, reason)
        return None

    def _bot(self, hold: Hold) -> str:
        return self.services.config.channels[hold.conv.channel].bot

    def _count(self, hold: Hold, outcome: str) -> None:
        self.services.metrics.transcriptions.labels(self._bot(hold), outcome).inc()
