"""Chromagram (paper, Sec. III-B) and MFCCs (Sec. III-C) from one short-time Fourier transform, block by block.

librosa's ``chroma_stft`` and ``mfcc`` each compute the same power spectrogram (``n_fft``, ``hop_length``,
centred Hann frames). Here it is computed once and both are derived from it, with librosa's own steps: the
chromagram from the power spectrogram (tuning estimated over the whole piece, chroma filter bank, each frame
max-normalised), the MFCCs from its mel spectrogram (``power_to_db`` with an 80-dB floor below the piece's
loudest bin, then the DCT). The spectrogram is computed in blocks of :data:`SPECTRAL_BLOCK_FRAMES` frames from
audio that arrives in blocks, so a piece's memory is bounded by its frames of chroma and mel bands, not by its
length. A piece whose waveform is held (:attr:`~mer.features.audio.DecodedAudio.resident`) keeps its spectrogram
blocks until the tuning is known; a longer one is transformed a second time for the chromagram instead.

Exactness: for a piece of at most one block (95 s at the defaults: every EMOPIA clip) the result equals librosa's
``chroma_stft`` and ``mfcc`` bit for bit; split into blocks, the chroma filter bank's matrix products round
differently (chroma within 2e-6, MFCCs within 2e-5 of librosa's: tested). Pure NumPy/librosa.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from mer.config import FeatureConfig
from mer.features.audio import DecodedAudio
from mer.features.librosa_kernels import load_librosa, one_process_compiles  # numba kernels: one process at a time

SPECTRAL_BLOCK_FRAMES = 4096
"""STFT frames transformed at a time (95 s at 22.05 kHz, hop 512: a 17-MB power block; librosa's tuning
estimate makes a few temporaries of its size)."""

N_CHROMA = 12
TUNING_RESOLUTION = 0.01  # librosa.estimate_tuning's default, in fractions of a bin


def power_blocks(blocks: Iterable[np.ndarray], *, config: FeatureConfig,
                 frames_per_block: int = SPECTRAL_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """``|STFT|**2`` of a waveform given in consecutive blocks, as (1 + n_fft/2, <= frames_per_block) float32
    blocks of frames: exactly the frames of ``librosa.stft(y, n_fft, hop_length)`` (centred, zero-padded by
    ``n_fft // 2`` at both ends), ``1 + samples // hop_length`` of them in all."""
    n_fft, hop = config.n_fft, config.hop_length
    span = (frames_per_block - 1) * hop + n_fft  # samples a full block of frames covers
    pending = np.zeros(n_fft // 2, dtype=np.float32)  # the centring pad before the first sample
    total = done = 0
    for block in blocks:
        total += block.shape[0]
        pending = np.concatenate([pending, np.asarray(block, dtype=np.float32)])
        while pending.shape[0] >= span:
            yield _power(pending[:span], config=config)
            pending = pending[frames_per_block * hop:]
            done += frames_per_block
    pending = np.concatenate([pending, np.zeros(n_fft // 2, dtype=np.float32)])  # the pad after the last sample
    left = 1 + total // hop - done
    while left > 0:
        count = min(left, frames_per_block)
        yield _power(pending[:(count - 1) * hop + n_fft], config=config)
        pending = pending[count * hop:]
        left -= count


def _power(segment: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """Power spectrogram of the frames that fit in ``segment`` (no padding): (1 + n_fft/2, frames) float32."""
    librosa = load_librosa()
    return np.abs(librosa.stft(segment, n_fft=config.n_fft, hop_length=config.hop_length, center=False)) ** 2


def tuning_candidates(power: np.ndarray, *, sr: float, n_fft: int, fmin: float = 150.0, fmax: float = 4000.0,
                      threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The spectral peaks librosa's tuning estimate counts: ``pitch[pitch > 0]`` and ``magnitude[pitch > 0]`` of
    ``librosa.piptrack(S=power, sr=sr, n_fft=n_fft)`` (its defaults), equal to them bit for bit (tested), in the
    same order.

    piptrack works on every bin and then keeps those in [fmin, fmax): 358 of 1025 at the defaults. This computes
    the same peak test (above ``threshold`` times the frame's maximum over *all* bins, a local maximum across
    frequency) and the same parabolic refinement only on those bins and their two neighbours, without piptrack's
    full-size output arrays: about a tenth of its time, which was over half of a clip's chromagram and MFCCs
    (``tests/benchmarks/bench_tuning.py``, ``tests/benchmarks/results/tuning.json``).

    Args:
        power: (1 + n_fft/2, frames) power spectrogram.

    Returns:
        pitch (peaks,) float32 in Hz, magnitude (peaks,) float32: bin by bin, frames in order within a bin.
    """
    librosa = load_librosa()
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    inside = np.flatnonzero((max(fmin, 0.0) <= freqs) & (freqs < min(fmax, float(sr) / 2)))
    if inside.size == 0 or inside[0] == 0 or inside[-1] >= power.shape[-2] - 1:  # no neighbour on one side
        pitch, magnitude = librosa.piptrack(S=power, sr=sr, n_fft=n_fft, fmin=fmin, fmax=fmax, threshold=threshold)
        found = pitch > 0
        return pitch[found], magnitude[found]
    low, high = int(inside[0]), int(inside[-1]) + 1
    band = power[low - 1: high + 1]  # the kept bins and one neighbour on each side
    centre, below, above = band[1:-1], band[:-2], band[2:]
    loud = threshold * power.max(axis=-2, keepdims=True)
    # util.localmax of S * (S > ref): greater than the bin below, at least the bin above.
    gated = band * (band > loud)
    peak = (gated[1:-1] > gated[:-2]) & (gated[1:-1] >= gated[2:])
    rows, cols = np.nonzero(peak)
    x0, x_below, x_above = centre[rows, cols], below[rows, cols], above[rows, cols]
    # piptrack's parabolic shift (librosa's numba stencil, whose float32 inputs meet integer constants and so
    # compute in float64), its gradient (float32) and the interpolated magnitude.
    a = (x_above + x_below).astype(np.float64) - 2 * x0.astype(np.float64)
    b = (x_above - x_below).astype(np.float64) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(np.abs(b) >= np.abs(a), 0.0, -b / a).astype(np.float32)
    slope = (x_above - x_below) / np.float32(2.0)
    pitch = ((rows + low) + shift.astype(np.float64)) * float(sr) / n_fft
    magnitude = x0 + np.float32(0.5) * slope * shift
    pitch = pitch.astype(power.dtype)
    found = pitch > 0
    return pitch[found], magnitude.astype(power.dtype)[found]


@one_process_compiles
def spectral_features(audio: DecodedAudio, *, config: FeatureConfig,
                      frames_per_block: int = SPECTRAL_BLOCK_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """A piece's chromagram and MFCCs from one STFT (two passes for audio too long to hold; module docstring).

    Args:
        audio: the waveform at ``config.sample_rate`` Hz.
        config: ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``, ``n_mfcc``.

    Returns:
        chroma (12, T) float32, pitch classes C..B, each frame max-normalised to 1; mfcc (n_mfcc, T) float32;
        ``T = 1 + samples // hop_length``.
    """
    librosa = load_librosa()
    rate, n_fft = config.sample_rate, config.n_fft
    mel_basis = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=config.n_mels)  # (n_mels, 1 + n_fft/2)
    pitches, magnitudes, mels, held = [], [], [], []
    for power in power_blocks(audio.blocks(), config=config, frames_per_block=frames_per_block):
        # Tuning candidates as librosa.estimate_tuning finds them (frame by frame), pooled over the piece.
        pitch, magnitude = tuning_candidates(power, sr=rate, n_fft=n_fft)
        pitches.append(pitch)
        magnitudes.append(magnitude)
        mels.append(np.einsum("...ft,mf->...mt", power, mel_basis, optimize=True))  # (n_mels, frames)
        if audio.resident:
            held.append(power)
    pitch, magnitude = np.concatenate(pitches), np.concatenate(magnitudes)
    threshold = np.median(magnitude) if magnitude.size else 0.0
    tuning = librosa.pitch_tuning(pitch[magnitude >= threshold], resolution=TUNING_RESOLUTION,
                                  bins_per_octave=N_CHROMA)
    chroma_basis = librosa.filters.chroma(sr=rate, n_fft=n_fft, tuning=tuning, n_chroma=N_CHROMA)  # (12, bins)
    powers = held if audio.resident else power_blocks(audio.blocks(), config=config, frames_per_block=frames_per_block)
    chroma = np.concatenate([
        librosa.util.normalize(np.einsum("cf,...ft->...ct", chroma_basis, power, optimize=True), norm=np.inf, axis=-2)
        for power in powers
    ], axis=1)  # (12, T)
    log_mel = librosa.power_to_db(np.concatenate(mels, axis=1))  # (n_mels, T), 80 dB below the piece's peak
    import scipy.fft  # here, not above: a worker that reads cached features never pays for importing it

    coefficients = scipy.fft.dct(log_mel, axis=-2, type=2, norm="ortho")[: config.n_mfcc]  # (n_mfcc, T)
    return chroma.astype(np.float32), coefficients.astype(np.float32)


def chromagram(audio: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """Chromagram of a waveform (paper, Sec. III-B): ``librosa.feature.chroma_stft`` with the config's STFT.

    Args:
        audio: (samples,) mono waveform at ``config.sample_rate`` Hz.
        config: ``sample_rate``, ``n_fft``, ``hop_length``.

    Returns:
        (12, frames) float32, pitch classes C..B, each frame max-normalised to 1 by librosa;
        ``frames = 1 + samples // hop_length`` (centred frames).
    """
    return spectral_features(_waveform(audio, config), config=config)[0]


def mfcc(audio: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """MFCCs of a waveform (paper, Sec. III-C: 23 mel bands): ``librosa.feature.mfcc`` with the config's STFT.

    Args:
        audio: (samples,) mono waveform at ``config.sample_rate`` Hz.
        config: ``sample_rate``, ``n_mfcc``, ``n_mels``, ``n_fft``, ``hop_length``.

    Returns:
        (n_mfcc, frames) float32, ``frames = 1 + samples // hop_length``.
    """
    return spectral_features(_waveform(audio, config), config=config)[1]


def _waveform(audio: np.ndarray, config: FeatureConfig) -> DecodedAudio:
    return DecodedAudio.from_waveform(audio, sample_rate=config.sample_rate)
