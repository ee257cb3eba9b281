"""Audio files → mono float32 at the feature sample rate, and the checks every waveform passes before features.

Decoding is libsndfile's (through :mod:`soundfile`): WAV, FLAC, OGG/Vorbis, AIFF and — since libsndfile 1.1, which
the ``soundfile`` wheels bundle — MP3. No ffmpeg or audioread is needed. Every failure is a
:class:`~mer.errors.BadInputError` naming the item and the reason (empty, a MIDI file, an unknown format,
truncated, silent, too short), never a library traceback.
"""
from __future__ import annotations

import io
import struct
from dataclasses import replace

import librosa
import numpy as np
import soundfile

from mer.config import FeatureConfig
from mer.errors import BadInputError

_BLOCK_FRAMES = 1 << 16  # decode in blocks: a corrupt header's frame count is never trusted for allocation


def check_audio(audio: np.ndarray, *, name: str, config: FeatureConfig) -> None:
    """Reject a waveform no feature can be computed from.

    Args:
        audio: (samples,) mono waveform at ``config.sample_rate`` Hz.
        name: the item, for the error message.
        config: gives ``sample_rate``, ``min_seconds`` and ``silence_rms``.

    Raises:
        BadInputError: not 1-D, NaN/infinite samples, shorter than ``config.min_seconds`` ("too short") or RMS
            below ``config.silence_rms`` ("silent"). Too short is reported before silent.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise BadInputError(name, f"audio must be mono (samples,), got shape {audio.shape}")
    seconds = audio.shape[0] / config.sample_rate
    if seconds < config.min_seconds:
        raise BadInputError(name, f"audio too short: {seconds:.3f} s, the minimum is {config.min_seconds} s")
    if not np.all(np.isfinite(audio)):
        raise BadInputError(name, "audio contains NaN or infinite samples")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < config.silence_rms:
        raise BadInputError(name, f"audio is silent: RMS {rms:.2e} is below {config.silence_rms:.0e}")


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    """Scale a waveform so its largest absolute sample is 1.0 (float32, (samples,)).

    Rendered and decoded audio both pass through here, so the MFCCs' energy coefficient describes the piece's
    dynamics relative to its own peak rather than the synthesizer's gain or a recording's mastering level. The
    chromagram is level-invariant anyway (librosa normalises each frame). An all-zero waveform is returned
    unchanged (:func:`check_audio` rejects it as silent first).
    """
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return audio
    return (audio / peak).astype(np.float32)


def decode_audio(data: bytes, *, name: str, config: FeatureConfig) -> np.ndarray:
    """Decode an audio file's bytes to the mono, resampled, peak-normalised waveform the features use.

    Args:
        data: the file's bytes (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...; the format is sniffed, not taken from a
            file name).
        name: the item, for error messages.
        config: ``sample_rate`` (Hz) to resample to, plus the :func:`check_audio` limits.

    Returns:
        (samples,) float32 at ``config.sample_rate`` Hz: channels averaged, resampled with ``librosa.resample``
        (soxr), then peak-normalised (:func:`peak_normalise`).

    Raises:
        BadInputError: empty; a MIDI file; not a format libsndfile reads (random bytes); corrupt or truncated
            (a WAV/AIFF shorter than its header declares, a FLAC/OGG stream that breaks off); no samples; and the
            :func:`check_audio` cases (silent, too short) — checked on the decoded level, before normalising.
            An MP3 that is cut off decodes to the audio it holds, as in any player: MP3 headers give only an
            estimate of the length, so a shortfall cannot be told from a bad estimate.
    """
    if not data:
        raise BadInputError(name, "empty audio file (0 bytes)")
    if data[:4] == b"MThd":
        raise BadInputError(name, "this is a MIDI file, not audio; pass it as the MIDI part of the item")
    _check_container_length(data, name=name)
    try:
        handle = soundfile.SoundFile(io.BytesIO(data))
    except (RuntimeError, ValueError, TypeError, OSError) as error:  # LibsndfileError is a RuntimeError
        raise BadInputError(
            name, f"cannot decode audio: not a WAV/FLAC/OGG/MP3/AIFF file, or a damaged one ({_why(error)})"
        ) from None
    with handle:
        declared, rate, kind = handle.frames, handle.samplerate, handle.format
        blocks = []
        try:
            while True:
                block = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                blocks.append(block)
        except (RuntimeError, ValueError, TypeError, OSError, MemoryError) as error:
            raise BadInputError(
                name, f"cannot decode audio: the {kind} stream is corrupt or truncated ({_why(error)})"
            ) from None
    if not blocks:
        raise BadInputError(name, "audio file holds no samples")
    samples = np.concatenate(blocks)  # (frames, channels)
    if kind != "MP3" and 0 < samples.shape[0] < declared:
        raise BadInputError(name, f"audio file is truncated: {samples.shape[0]} of {declared} frames decoded")
    audio = samples.mean(axis=1, dtype=np.float32)
    if rate != config.sample_rate:
        check_audio(audio, name=name, config=_at_rate(config, rate))  # reject before paying for resampling
        audio = librosa.resample(audio, orig_sr=rate, target_sr=config.sample_rate).astype(np.float32)
    check_audio(audio, name=name, config=config)
    return peak_normalise(audio)


def _why(error: BaseException) -> str:
    """libsndfile's own words for a failure, without the Python object's repr it puts in the message."""
    text = getattr(error, "error_string", None) or str(error) or type(error).__name__
    return " ".join(text.split())[:200]


def _at_rate(config: FeatureConfig, rate: int) -> FeatureConfig:
    """The same limits, for a waveform still at its file's rate."""
    return replace(config, sample_rate=int(rate))


def _check_container_length(data: bytes, *, name: str) -> None:
    """A RIFF/WAVE or AIFF file shorter than its header says is truncated.

    libsndfile quietly decodes such a file up to where it breaks off, so the check reads the container's own
    size field (RIFF: little-endian, AIFF: big-endian, both counting the bytes after the first 8). Streaming
    writers that leave the field 0 or 0xFFFFFFFF are not judged.
    """
    if len(data) < 12:
        return
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        (size,) = struct.unpack("<I", data[4:8])
    elif data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        (size,) = struct.unpack(">I", data[4:8])
    else:
        return
    if size in (0, 0xFFFFFFFF):
        return
    if len(data) < size + 8:
        raise BadInputError(
            name, f"audio file is truncated: its header declares {size + 8} bytes, the file has {len(data)}"
        )
