"""Audio through PyAV: what a file is and how long, kept as it is when the speech API takes it,
converted when it does not (a video note's picture dropped, a codec the API does not list)."""

from __future__ import annotations

import pytest

from gateway.speech.audio import AudioUnreadable, for_transcription, probe, transcode
from tests.support.audio import sine, video_note, voice_note


def test_a_telegram_voice_note_goes_as_it_is_named_ogg() -> None:
    data = voice_note(1.5)
    prepared = for_transcription(data, "voice_AgADBA.oga")
    assert (prepared.name, prepared.content_type, prepared.data) == ("voice_AgADBA.ogg", "audio/ogg", data)
    assert not prepared.converted and prepared.duration_s == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize(
    ("fmt", "codec", "name", "expected"),
    [("webm", "libopus", "clip.webm", "clip.webm"), ("mp4", "aac", "audio_message.m4a", "audio_message.m4a"),
     ("mp3", "libmp3lame", "song", "song.mp3"), ("wav", "pcm_s16le", "memo.WAV", "memo.wav")],
)
def test_formats_the_api_lists_go_unchanged_under_their_extension(fmt: str, codec: str, name: str, expected: str) -> None:
    data = sine(0.5, fmt=fmt, codec=codec, rate=48_000 if codec == "libopus" else 16_000)
    prepared = for_transcription(data, name)
    assert prepared.name == expected and prepared.data == data and not prepared.converted


def test_a_video_notes_sound_is_taken_out_as_ogg_opus_with_its_tags() -> None:
    prepared = for_transcription(video_note(1.0, title="hello"), "video_note_1.mp4")
    assert prepared.converted and prepared.name == "video_note_1.ogg" and prepared.content_type == "audio/ogg"
    info = probe(prepared.data)
    assert (info.container, info.codec, info.has_video) == ("ogg", "opus", False)
    assert info.duration_s == pytest.approx(1.0, abs=0.15)


def test_a_codec_the_api_does_not_list_is_converted() -> None:
    raw_aac = sine(0.5, fmt="adts", codec="aac", rate=16_000)  # what some phones send as .aac
    prepared = for_transcription(raw_aac, "recording.aac")
    assert prepared.converted and prepared.name == "recording.ogg"
    assert probe(prepared.data).codec == "opus"


def test_speech_becomes_the_format_a_platform_plays() -> None:
    mp3, content_type = transcode(sine(0.5, fmt="wav", codec="pcm_s16le", rate=24_000), "mp3")
    assert content_type == "audio/mpeg" and probe(mp3).container == "mp3"
    ogg, content_type = transcode(mp3, "ogg")
    assert content_type == "audio/ogg" and (probe(ogg).container, probe(ogg).codec) == ("ogg", "opus")


@pytest.mark.parametrize("data", [b"", b"not audio at all", b"\x89PNG\r\n\x1a\n" + bytes(64)])
def test_bytes_that_are_not_audio_are_unreadable(data: bytes) -> None:
    with pytest.raises(AudioUnreadable):
        for_transcription(data, "voice.ogg")
    with pytest.raises(AudioUnreadable):
        transcode(data, "ogg")
