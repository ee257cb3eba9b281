"""Decoding audio files: every format people have, one waveform shape out, and a clear reason for bad files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mer.config import FeatureConfig
from mer.errors import BadInputError
from mer.features.audio import check_audio, decode_audio, peak_normalise

CONFIG = FeatureConfig()
SR = CONFIG.sample_rate


def sine(seconds: float, *, rate: int = SR, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(audio: np.ndarray, *, rate: int = SR, format: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def dominant_frequency(audio: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def test_a_wav_at_the_feature_rate_decodes_to_its_samples_peak_normalised() -> None:
    audio = sine(1.0)
    decoded = decode_audio(encode(audio, subtype="FLOAT"), name="a.wav", config=CONFIG)
    assert decoded.dtype == np.float32 and decoded.shape == audio.shape
    np.testing.assert_allclose(decoded, audio / np.abs(audio).max(), atol=1e-6)


@pytest.mark.parametrize(
    ("format", "subtype"),
    [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")],
)
def test_stereo_44k_files_of_every_format_become_mono_at_the_feature_rate(format: str, subtype: str) -> None:
    left = sine(1.0, rate=44_100, freq=440.0)
    stereo = np.stack([left, left], axis=1)  # (frames, 2)
    decoded = decode_audio(encode(stereo, rate=44_100, format=format, subtype=subtype), name="x", config=CONFIG)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # Lossy codecs add encoder delay/padding: within 0.1 s of the original second.
    assert abs(decoded.shape[0] / SR - 1.0) < 0.1
    assert np.max(np.abs(decoded)) == pytest.approx(1.0)
    assert dominant_frequency(decoded) == pytest.approx(440.0, abs=3.0)


def test_channels_are_averaged() -> None:
    left, right = sine(1.0, freq=440.0), sine(1.0, freq=660.0, amplitude=0.1)
    decoded = decode_audio(encode(np.stack([left, right], axis=1), subtype="FLOAT"), name="x", config=CONFIG)
    expected = (left + right) / 2
    np.testing.assert_allclose(decoded, expected / np.abs(expected).max(), atol=1e-6)


def bad_inputs(emopia: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a word the reason must contain)."""
    wav = encode(sine(1.0), subtype="PCM_16")
    midi = (emopia / "midis" / "Q1_0vLPYiPN7qY_0.mid").read_bytes()
    return {
        "empty": (b"", "empty"),
        "random bytes": (np.random.default_rng(0).bytes(4096), "cannot decode"),
        "truncated wav": (wav[: len(wav) // 2], "truncated"),
        "header-only wav": (wav[:40], "truncated"),
        "truncated flac": (encode(sine(1.0), format="FLAC")[:3000], "corrupt or truncated"),
        "midi as audio": (midi, "MIDI"),
        "silent": (encode(np.zeros(SR, np.float32)), "silent"),
        "5 ms long": (encode(sine(0.005)), "too short"),
        "NaN samples": (encode(np.full(SR, np.nan, np.float32), subtype="FLOAT"), "NaN"),
    }


BAD_CASES = ("empty", "random bytes", "truncated wav", "header-only wav", "truncated flac", "midi as audio",
             "silent", "5 ms long", "NaN samples")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_audio_files_raise_bad_input_naming_the_item_and_reason(case: str, emopia: Path) -> None:
    data, reason = bad_inputs(emopia)[case]
    with pytest.raises(BadInputError) as caught:
        decode_audio(data, name=f"{case}.bin", config=CONFIG)
    assert caught.value.item == f"{case}.bin"
    assert reason.lower() in caught.value.reason.lower()


def test_silence_and_length_are_judged_at_the_files_own_rate() -> None:
    # 0.6 s at 8 kHz is long enough; the same samples read as 22.05 kHz would not be.
    decode_audio(encode(sine(0.6, rate=8_000), rate=8_000), name="x", config=CONFIG)
    with pytest.raises(BadInputError, match="too short"):
        decode_audio(encode(sine(0.3, rate=8_000), rate=8_000), name="x", config=CONFIG)


def test_check_audio_accepts_quiet_music_and_rejects_near_silence() -> None:
    check_audio(sine(1.0, amplitude=0.01), name="quiet", config=CONFIG)
    with pytest.raises(BadInputError, match="silent"):
        check_audio(sine(1.0, amplitude=1e-5), name="hiss", config=CONFIG)
    with pytest.raises(BadInputError, match="mono"):
        check_audio(np.zeros((2, SR), np.float32), name="stereo", config=CONFIG)


def test_peak_normalise_scales_to_one_and_leaves_silence_alone() -> None:
    audio = sine(0.5, amplitude=0.2)
    assert np.max(np.abs(peak_normalise(audio))) == pytest.approx(1.0)
    np.testing.assert_array_equal(peak_normalise(np.zeros(10, np.float32)), np.zeros(10, np.float32))
