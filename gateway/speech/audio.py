"""What an audio file is, how long it lasts, and the conversions the speech service or a platform
needs, with PyAV: FFmpeg comes inside its wheels, so there is no binary to find on the host and
no subprocess to run.

OpenAI-compatible transcription takes a file by its extension, from a short list (docs/VOICE.md#the-speech-api):
what a platform sends in a container and codec of that list goes as it is, under the right
extension (a Telegram voice note is OGG/Opus: ``.ogg``); anything else (AMR, raw AAC, a video
note's MP4 with its picture) becomes OGG/Opus first, mono, which also makes the upload small.

Everything here is CPU work on bytes in memory, bounded by the size limit checked before it:
callers on an event loop run it in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer

__all__ = ["AudioInfo", "AudioUnreadable", "SpeechFile", "VoiceFormat", "for_transcription", "probe", "transcode"]

#: The formats a voice reply is made in: OGG/Opus (Telegram's voice notes) or MP3.
VoiceFormat = Literal["ogg", "mp3"]

#: FFmpeg demuxer → (extension the speech API knows, its content type, the decoders (FFmpeg's
#: names) of the codecs it holds that the API decodes). Another codec in it is converted.
_ACCEPTED: dict[str, tuple[str, str, frozenset[str]]] = {
    "ogg": ("ogg", "audio/ogg", frozenset({"opus", "libopus", "vorbis", "libvorbis", "flac"})),
    "matroska,webm": ("webm", "audio/webm", frozenset({"opus", "libopus", "vorbis", "libvorbis"})),
    "mp3": ("mp3", "audio/mpeg", frozenset({"mp3", "mp3float"})),
    "wav": ("wav", "audio/wav", frozenset({"pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8", "pcm_mulaw", "pcm_alaw"})),
    "flac": ("flac", "audio/flac", frozenset({"flac"})),
    "mov,mp4,m4a,3gp,3g2,mj2": ("m4a", "audio/mp4", frozenset({"aac", "alac", "mp3", "mp3float"})),
}
#: Encoder, container and content type of each voice format.
_ENCODERS: dict[VoiceFormat, tuple[str, str, str, int]] = {
    "ogg": ("libopus", "ogg", "audio/ogg", 48_000),
    "mp3": ("libmp3lame", "mp3", "audio/mpeg", 44_100),
}
#: Speech needs little: mono at this bit rate is clear and keeps a minute near 250 KB.
_BIT_RATE = 32_000
#: Tags a converted recording keeps (what it is, what language it speaks).
_KEPT_TAGS = ("title", "language")


class AudioUnreadable(Exception):
    """Raised when the bytes are not audio FFmpeg can read (or hold no audio stream)."""


@dataclass(frozen=True, slots=True)
class AudioInfo:
    #: FFmpeg's demuxer name (``ogg``, ``matroska,webm``, ``mov,mp4,m4a,3gp,3g2,mj2``…).
    container: str
    #: The first audio stream's codec (``opus``, ``aac``…).
    codec: str
    duration_s: float
    has_video: bool


@dataclass(frozen=True, slots=True)
class SpeechFile:
    """Audio ready for ``/audio/transcriptions``: a name whose extension says the format."""

    name: str
    content_type: str
    data: bytes
    duration_s: float
    #: Whether it was converted (for the log).
    converted: bool = False


def probe(data: bytes) -> AudioInfo:
    """The container, codec and duration of ``data``.

    Raises:
        AudioUnreadable: not a format FFmpeg reads, or no audio in it.
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioUnreadable("no audio stream")
            stream = container.streams.audio[0]
            info = AudioInfo(
                container=container.format.name,
                codec=stream.codec_context.name,
                duration_s=_duration(container, stream),
                has_video=bool(container.streams.video),
            )
    except av.error.FFmpegError as exc:
        raise AudioUnreadable(f"not readable audio: {exc}") from None
    return info


def _duration(container: InputContainer, stream: AudioStream) -> float:
    """The container's own duration, else the stream's, else the sum of its packets' (a file
    recorded in a browser often says none)."""
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / av.time_base
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    total = 0
    for packet in container.demux(stream):
        total += packet.duration or 0
    return float(total * stream.time_base) if stream.time_base is not None else 0.0


def for_transcription(data: bytes, name: str) -> SpeechFile:
    """``data`` as the speech API takes it: unchanged when its container and codec are on the
    API's list (named with the matching extension), else converted to OGG/Opus.

    Raises:
        AudioUnreadable: not audio.
    """
    info = probe(data)
    stem = name.rsplit(".", 1)[0] or "voice"
    accepted = _ACCEPTED.get(info.container)
    if accepted is not None and info.codec in accepted[2] and not info.has_video:
        extension, content_type, _ = accepted
        return SpeechFile(f"{stem}.{extension}", content_type, data, info.duration_s)
    converted, content_type = transcode(data, "ogg")
    return SpeechFile(f"{stem}.ogg", content_type, converted, info.duration_s, converted=True)


def transcode(data: bytes, fmt: VoiceFormat) -> tuple[bytes, str]:
    """The first audio stream of ``data`` re-encoded as mono ``fmt`` (the picture, if any, dropped);
    returns the bytes and their content type.

    Raises:
        AudioUnreadable: not audio.
    """
    encoder, muxer, content_type, rate = _ENCODERS[fmt]
    out = io.BytesIO()
    try:
        with av.open(io.BytesIO(data), mode="r") as source:
            if not source.streams.audio:
                raise AudioUnreadable("no audio stream")
            audio = source.streams.audio[0]
            with av.open(out, mode="w", format=muxer) as target:
                stream = target.add_stream(encoder, rate=rate, layout="mono")
                assert isinstance(stream, AudioStream)  # an audio encoder makes an audio stream
                for tags in (source.metadata, audio.metadata):
                    stream.metadata.update({tag: tags[tag] for tag in _KEPT_TAGS if tag in tags})
                stream.bit_rate = _BIT_RATE
                resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
                for frame in source.decode(audio):
                    for converted in resampler.resample(frame):
                        target.mux(stream.encode(converted))
                for converted in resampler.resample(None):
                    target.mux(stream.encode(converted))
                target.mux(stream.encode(None))
    except av.error.FFmpegError as exc:
        raise AudioUnreadable(f"could not convert the audio: {exc}") from None
    return out.getvalue(), content_type
