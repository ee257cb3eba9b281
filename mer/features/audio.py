"""Audio files → mono float32 at the feature sample rate, and the checks every waveform passes before features.

Decoding is libsndfile's (through :mod:`soundfile`): WAV, FLAC, OGG/Vorbis, AIFF and — since libsndfile 1.1, which
the ``soundfile`` wheels bundle — MP3. No ffmpeg or audioread is needed. Every failure is a
:class:`~mer.errors.BadInputError` naming the item and the reason (empty, a MIDI file, an unknown format,
truncated, silent, too short), never a library traceback.

Memory is bounded per item: a file is decoded in blocks of :data:`BLOCK_SAMPLES` frames, each block is mixed to
mono and resampled by soxr's streaming resampler (which gives exactly the samples of a one-shot
``librosa.resample``), and :func:`open_audio` keeps the waveform only when it is at most
:data:`RESIDENT_SAMPLES` long. A longer one (an hour-long recording) is decoded again, block by block, each time
it is read (:meth:`DecodedAudio.blocks`), so an item never holds its whole waveform, let alone the file's
stereo samples at their own rate. Either way the samples are the same, bit for bit.
"""
from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from mer.config import FeatureConfig
from mer.errors import BadInputError

BLOCK_SAMPLES = 1 << 16
"""Frames decoded (and samples handed on) at a time: a corrupt header's frame count is never trusted for
allocation, and a block is a few hundred kB."""

RESIDENT_SAMPLES = 1 << 24
"""Samples at the feature rate (64 MiB of float32, 12.7 minutes at 22.05 kHz) up to which a decoded waveform is
held in memory; a longer one is decoded again whenever it is read."""

RESAMPLE_QUALITY = "soxr_hq"  # librosa.resample's default


@dataclass
class Levels:
    """Running statistics of a waveform's samples, gathered block by block: enough to judge it
    (:meth:`check`) and to peak-normalise it without holding it."""

    samples: int = 0
    square_sum: float = 0.0
    finite: bool = True
    peak: float = 0.0

    @classmethod
    def of(cls, audio: np.ndarray) -> Levels:
        levels = cls()
        levels.add(audio)
        return levels

    def add(self, block: np.ndarray) -> None:
        """Count one block of samples (any float dtype, (samples,))."""
        self.samples += block.shape[0]
        self.square_sum += float(np.sum(np.square(block, dtype=np.float64)))
        self.finite = self.finite and bool(np.all(np.isfinite(block)))
        if block.size:
            self.peak = max(self.peak, float(np.max(np.abs(block))))

    def check(self, *, name: str, config: FeatureConfig) -> None:
        """Raise :class:`BadInputError` for a waveform no feature can be computed from (see :func:`check_audio`)."""
        seconds = self.samples / config.sample_rate
        if seconds < config.min_seconds:
            raise BadInputError(name, f"audio too short: {seconds:.3f} s, the minimum is {config.min_seconds} s")
        if not self.finite:
            raise BadInputError(name, "audio contains NaN or infinite samples")
        rms = math.sqrt(self.square_sum / self.samples)
        if rms < config.silence_rms:
            raise BadInputError(name, f"audio is silent: RMS {rms:.2e} is below {config.silence_rms:.0e}")


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
    Levels.of(audio).check(name=name, config=config)


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


class DecodedAudio:
    """A decoded waveform: mono float32 at ``sample_rate`` Hz, peak-normalised, read block by block.

    Made by :func:`open_audio` from a file, or by :meth:`from_waveform` from samples already in memory (a
    rendering). A waveform of at most :data:`RESIDENT_SAMPLES` is held; a longer file-backed one is decoded from
    its file again on every :meth:`blocks` call, so the file must stay open while the audio is used.
    """

    def __init__(self, *, name: str, samples: int, sample_rate: int, peak: float, waveform: np.ndarray | None,
                 source: BinaryIO | None = None, config: FeatureConfig | None = None) -> None:
        self.name, self.samples, self.sample_rate, self.peak = name, samples, sample_rate, peak
        self._waveform, self._source, self._config = waveform, source, config

    @classmethod
    def from_waveform(cls, audio: np.ndarray, *, sample_rate: int, name: str = "") -> DecodedAudio:
        """Samples already decoded (or rendered) and normalised: (samples,) float32."""
        audio = np.asarray(audio, dtype=np.float32)
        return cls(name=name, samples=audio.shape[0], sample_rate=sample_rate,
                   peak=float(np.max(np.abs(audio))) if audio.size else 0.0, waveform=audio)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def resident(self) -> bool:
        """Whether the whole waveform is in memory (else each read decodes the file again)."""
        return self._waveform is not None

    def blocks(self) -> Iterator[np.ndarray]:
        """The waveform in consecutive (<= :data:`BLOCK_SAMPLES`,) float32 blocks."""
        if self._waveform is not None:
            for start in range(0, self.samples, BLOCK_SAMPLES):
                yield self._waveform[start:start + BLOCK_SAMPLES]
            return
        for block in _decoded(self._source, name=self.name, config=self._config):
            yield block / self.peak if self.peak else block  # float32 / float -> float32, as peak_normalise

    def waveform(self) -> np.ndarray:
        """The whole waveform, (samples,) float32 (allocated for a non-resident one)."""
        if self._waveform is not None:
            return self._waveform
        out = np.empty(self.samples, dtype=np.float32)
        position = 0
        for block in self.blocks():
            out[position:position + block.shape[0]] = block
            position += block.shape[0]
        return out


def open_audio(source: bytes | BinaryIO, *, name: str, config: FeatureConfig,
               resident_samples: int = RESIDENT_SAMPLES) -> DecodedAudio:
    """Decode an audio file block by block into a :class:`DecodedAudio`: channels averaged, resampled to
    ``config.sample_rate`` (soxr, as ``librosa.resample``), judged (:func:`check_audio`, at the file's rate and
    at the feature rate, on the levels before normalising), peak-normalised (:func:`peak_normalise`).

    Args:
        source: the file's bytes, or a seekable binary file (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...; the format is
            sniffed, not taken from a file name). A file must stay open while the audio is used.
        name: the item, for error messages.
        config: ``sample_rate`` (Hz) to resample to, plus the :func:`check_audio` limits.
        resident_samples: hold the waveform when it has at most this many samples.

    Raises:
        BadInputError: as :func:`decode_audio`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    source.seek(0)
    head = source.read(12)
    size = source.seek(0, io.SEEK_END)
    if size == 0:
        raise BadInputError(name, "empty audio file (0 bytes)")
    if head[:4] == b"MThd":
        raise BadInputError(name, "this is a MIDI file, not audio; pass it as the MIDI part of the item")
    _check_container_length(head, size=size, name=name)
    file_levels, levels, info = Levels(), Levels(), {}
    held: list[np.ndarray] | None = []
    for block in _decoded(source, name=name, config=config, file_levels=file_levels, info=info):
        levels.add(block)
        if held is not None:
            held.append(block)
            if levels.samples > resident_samples:
                held = None  # too long to hold: decoded again when read
    if info["rate"] != config.sample_rate:
        file_levels.check(name=name, config=_at_rate(config, info["rate"]))  # judged as a file, then resampled
    levels.check(name=name, config=config)
    waveform = None
    if held is not None:
        waveform = peak_normalise(np.concatenate(held))
    return DecodedAudio(name=name, samples=levels.samples, sample_rate=config.sample_rate, peak=levels.peak,
                        waveform=waveform, source=source, config=config)


def decode_audio(data: bytes, *, name: str, config: FeatureConfig) -> np.ndarray:
    """Decode an audio file's bytes to the mono, resampled, peak-normalised waveform the features use.

    Args:
        data: the file's bytes (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...; the format is sniffed, not taken from a
            file name).
        name: the item, for error messages.
        config: ``sample_rate`` (Hz) to resample to, plus the :func:`check_audio` limits.

    Returns:
        (samples,) float32 at ``config.sample_rate`` Hz: channels averaged, resampled with ``librosa.resample``'s
        soxr (streamed, the same samples), then peak-normalised (:func:`peak_normalise`).

    Raises:
        BadInputError: empty; a MIDI file; not a format libsndfile reads (random bytes); corrupt or truncated
            (a WAV/AIFF shorter than its header declares, a FLAC/OGG stream that breaks off); no samples; and the
            :func:`check_audio` cases (silent, too short) — checked on the decoded level, before normalising.
            An MP3 that is cut off decodes to the audio it holds, as in any player: MP3 headers give only an
            estimate of the length, so a shortfall cannot be told from a bad estimate.
    """
    return open_audio(data, name=name, config=config, resident_samples=np.iinfo(np.int64).max).waveform()


def _frames(source: BinaryIO, *, name: str, levels: Levels | None, info: dict) -> Iterator[np.ndarray]:
    """The file's frames mixed to mono, (<= BLOCK_SAMPLES,) float32 blocks at the file's rate (``info["rate"]``
    is set once the file is open)."""
    source.seek(0)
    try:
        handle = soundfile.SoundFile(source)
    except (RuntimeError, ValueError, TypeError, OSError) as error:  # LibsndfileError is a RuntimeError
        raise BadInputError(
            name, f"cannot decode audio: not a WAV/FLAC/OGG/MP3/AIFF file, or a damaged one ({_why(error)})"
        ) from None
    with handle:
        declared, kind = handle.frames, handle.format
        info["rate"] = handle.samplerate
        count = 0
        while True:
            try:
                block = handle.read(BLOCK_SAMPLES, dtype="float32", always_2d=True)  # (frames, channels)
            except (RuntimeError, ValueError, TypeError, OSError, MemoryError) as error:
                raise BadInputError(
                    name, f"cannot decode audio: the {kind} stream is corrupt or truncated ({_why(error)})"
                ) from None
            if block.shape[0] == 0:
                break
            count += block.shape[0]
            mono = block.mean(axis=1, dtype=np.float32)  # (frames,)
            if levels is not None:
                levels.add(mono)
            yield mono
    if count == 0:
        raise BadInputError(name, "audio file holds no samples")
    if kind != "MP3" and count < declared:
        raise BadInputError(name, f"audio file is truncated: {count} of {declared} frames decoded")


def _decoded(source: BinaryIO, *, name: str, config: FeatureConfig, file_levels: Levels | None = None,
             info: dict | None = None) -> Iterator[np.ndarray]:
    """The file's mono blocks resampled to ``config.sample_rate``, not normalised."""
    info = {} if info is None else info
    frames = _frames(source, name=name, levels=file_levels, info=info)
    first = next(frames)  # opens the file (or raises): its rate is known from here on
    yield from _resampled(_chain(first, frames), rate=info["rate"], target=config.sample_rate)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _resampled(blocks: Iterator[np.ndarray], *, rate: int, target: int) -> Iterator[np.ndarray]:
    """soxr's stream resampler over ``blocks``: the samples of ``librosa.resample(whole, orig_sr=rate,
    target_sr=target)``, bit for bit, including its length, ``ceil(samples * target / rate)`` (the last
    output block is held back so the length can be fixed at the end)."""
    if rate == target:
        yield from blocks
        return
    stream = soxr.ResampleStream(rate, target, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    seen = given = 0
    held = np.zeros(0, dtype=np.float32)
    for block in blocks:
        seen += block.shape[0]
        out = stream.resample_chunk(block, last=False)
        if out.size:
            if held.size:
                given += held.shape[0]
                yield held
            held = out
    last = np.concatenate([held, stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)])
    wanted = math.ceil(seen * target / rate) - given
    last = last[:wanted] if last.shape[0] >= wanted else np.pad(last, (0, wanted - last.shape[0]))
    if last.size:
        yield last


def _why(error: BaseException) -> str:
    """libsndfile's own words for a failure, without the Python object's repr it puts in the message."""
    text = getattr(error, "error_string", None) or str(error) or type(error).__name__
    return " ".join(text.split())[:200]


def _at_rate(config: FeatureConfig, rate: int) -> FeatureConfig:
    """The same limits, for a waveform still at its file's rate."""
    return replace(config, sample_rate=int(rate))


def _check_container_length(head: bytes, *, size: int, name: str) -> None:
    """A RIFF/WAVE or AIFF file shorter than its header says is truncated.

    libsndfile quietly decodes such a file up to where it breaks off, so the check reads the container's own
    size field from the file's first 12 bytes ``head`` (RIFF: little-endian, AIFF: big-endian, both counting the
    bytes after the first 8) and compares it with the file's ``size``. Streaming writers that leave the field 0
    or 0xFFFFFFFF are not judged.
    """
    if len(head) < 12:
        return
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        (declared,) = struct.unpack("<I", head[4:8])
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        (declared,) = struct.unpack(">I", head[4:8])
    else:
        return
    if declared in (0, 0xFFFFFFFF):
        return
    if size < declared + 8:
        raise BadInputError(
            name, f"audio file is truncated: its header declares {declared + 8} bytes, the file has {size}"
        )
