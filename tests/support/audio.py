"""Test audio made with PyAV, so no test needs a file from outside: a sine tone of a given length
in any container and codec FFmpeg writes, with an optional ``title`` tag. The fake speech service
(``tests/fakes/openai_audio.py``) "hears" that tag, so a test says what a voice note says."""

from __future__ import annotations

import io
import math
import struct
from fractions import Fraction

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

__all__ = ["sine", "title_of", "video_note", "voice_note"]

_CHUNK = 960  # samples per frame: one Opus frame at 48 kHz


def _samples(start: int, count: int, rate: int) -> bytes:
    return b"".join(
        struct.pack("<h", int(6000 * math.sin(2 * math.pi * 440 * (start + i) / rate))) for i in range(count)
    )


def sine(
    seconds: float, *, fmt: str = "ogg", codec: str = "libopus", rate: int = 48_000, title: str | None = None
) -> bytes:
    """A mono 440 Hz tone of ``seconds`` as ``fmt`` (an FFmpeg muxer) encoded with ``codec``."""
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, AudioStream)
        if title is not None:
            stream.metadata["title"] = title
            container.metadata["title"] = title
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        total = int(seconds * rate)
        for start in range(0, total, _CHUNK):
            count = min(_CHUNK, total - start)
            frame = av.AudioFrame(format="s16", layout="mono", samples=count)
            frame.planes[0].update(_samples(start, count, rate))
            frame.sample_rate = rate
            for converted in resampler.resample(frame):
                container.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))
    return out.getvalue()


def voice_note(seconds: float = 1.0, title: str | None = None) -> bytes:
    """What Telegram records: OGG/Opus, mono, 48 kHz."""
    return sine(seconds, title=title)


def video_note(seconds: float = 1.0, title: str | None = None) -> bytes:
    """A round video note as Telegram sends it: MP4 with a (tiny) picture and AAC sound."""
    out = io.BytesIO()
    rate = 16_000
    with av.open(out, mode="w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=10)
        assert isinstance(video, VideoStream)
        video.width = video.height = 16
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        assert isinstance(audio, AudioStream)
        if title is not None:
            audio.metadata["title"] = title
            container.metadata["title"] = title
        for index in range(int(seconds * 10)):
            picture = av.VideoFrame(16, 16, "yuv420p")
            for plane in picture.planes:
                plane.update(bytes(plane.buffer_size))
            picture.pts = index
            picture.time_base = Fraction(1, 10)
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
        resampler = av.AudioResampler(format=audio.format.name, layout="mono", rate=rate)
        total = int(seconds * rate)
        for start in range(0, total, 1024):
            count = min(1024, total - start)
            frame = av.AudioFrame(format="s16", layout="mono", samples=count)
            frame.planes[0].update(_samples(start, count, rate))
            frame.sample_rate = rate
            for converted in resampler.resample(frame):
                container.mux(audio.encode(converted))
        for converted in resampler.resample(None):
            container.mux(audio.encode(converted))
        container.mux(audio.encode(None))
    return out.getvalue()


def title_of(data: bytes) -> str | None:
    """The ``title`` tag of a recording (the fake speech service writes the spoken text there)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        return stream.metadata.get("title") or container.metadata.get("title")
