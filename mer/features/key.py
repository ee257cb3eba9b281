"""Key, mode and a piece's note statistics: the summary descriptors of a window (issue: key and mode).

Key finding after Krumhansl & Kessler (1982; Krumhansl 1990, the Krumhansl–Schmuckler algorithm): the
duration-weighted pitch-class histogram of the notes is correlated (Pearson) with the major and minor
probe-tone profiles in all 12 transpositions; the best of the 24 is the key. The confidence is the margin of
the best correlation over the runner-up (0 when two keys tie; the major key and its relative minor often come
close). For audio-only items the histogram is the chromagram's mean over its real frames.

:func:`key_descriptor` and :func:`note_statistics` are the first part of a window's summary
(mer.features.summary): key-invariant numbers (correlations, the histogram rotated to the estimated tonic) and
note statistics, so transposing a piece leaves them unchanged except for the mean pitch. Pure NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Krumhansl & Kessler (1982) probe-tone ratings; index 0 is the tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")

KEY_DESCRIPTOR_NAMES: tuple[str, ...] = (
    "best_major_correlation", "best_minor_correlation", "major_minus_minor", "key_confidence", "is_minor",
    *(f"degree_{i}" for i in range(12)),  # the pitch-class histogram rotated so the estimated tonic is degree 0
)
NOTE_STATISTIC_NAMES: tuple[str, ...] = (
    "note_density", "velocity_mean", "velocity_std", "pitch_mean", "pitch_std", "pitch_range", "note_length_mean",
    "median_inter_onset",
)
PITCH_MEAN_SCALE = 12.0  # pitch_mean is stored as (mean MIDI pitch - 60) / 12: one unit per octave


def _key_profiles() -> np.ndarray:
    """(24, 12): the 12 major then the 12 minor profiles, each rotated to its tonic, centred, unit length."""
    rows = np.array([np.roll(MAJOR_PROFILE, k) for k in range(12)] + [np.roll(MINOR_PROFILE, k) for k in range(12)])
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


_KEY_PROFILES = _key_profiles()


@dataclass(frozen=True)
class Key:
    """An estimated key: ``tonic`` pitch class 0..11 (C = 0), ``mode`` "major" | "minor", ``confidence`` >= 0."""

    tonic: int
    mode: str
    confidence: float

    @property
    def name(self) -> str:
        """E.g. ``"A minor"``."""
        return f"{PITCH_CLASS_NAMES[self.tonic]} {self.mode}"


def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """Duration-weighted pitch-class histogram of notes.

    Args:
        notes: (N, 4) ``start_s, end_s, pitch, velocity``.

    Returns:
        (12,) float64 summing to 1 (C..B), or zeros when there are no notes.
    """
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    if notes.shape[0] == 0:
        return np.zeros(12)
    length = np.maximum(notes[:, 1] - notes[:, 0], 1e-3)  # a zero-length note still counts a little
    histogram = np.bincount(notes[:, 2].astype(np.int64) % 12, weights=length, minlength=12)
    return histogram / histogram.sum()


def chroma_histogram(chroma: np.ndarray) -> np.ndarray:
    """Pitch-class histogram of a chromagram (12, F): the mean over frames that hold any energy, summing to 1
    (zeros for silence or an all-padding window)."""
    chroma = np.asarray(chroma, dtype=np.float64)
    real = chroma.sum(axis=0) > 0
    if not real.any():
        return np.zeros(12)
    histogram = chroma[:, real].mean(axis=1)
    return histogram / histogram.sum()


def key_correlations(histogram: np.ndarray) -> np.ndarray:
    """Pearson correlations (24,) of a (12,) histogram with C..B major, then C..B minor. Zeros for a flat
    histogram (it has no key)."""
    centred = np.asarray(histogram, dtype=np.float64) - np.mean(histogram)
    norm = np.linalg.norm(centred)
    if norm < 1e-12:
        return np.zeros(24)
    return _KEY_PROFILES @ (centred / norm)


def estimate_key(histogram: np.ndarray) -> Key:
    """The best-correlated of the 24 keys, with the margin over the runner-up as confidence.
    A flat or empty histogram gives C major with confidence 0."""
    correlations = key_correlations(histogram)
    best = int(np.argmax(correlations))
    ranked = np.sort(correlations)
    return Key(tonic=best % 12, mode=MODES[best // 12], confidence=float(ranked[-1] - ranked[-2]))


def key_descriptor(histogram: np.ndarray) -> np.ndarray:
    """Key-invariant key and mode numbers of a histogram: (len(KEY_DESCRIPTOR_NAMES),) float64."""
    correlations = key_correlations(histogram)
    key = estimate_key(histogram)
    best_major, best_minor = correlations[:12].max(), correlations[12:].max()
    rotated = np.roll(np.asarray(histogram, dtype=np.float64), -key.tonic)
    return np.concatenate([[best_major, best_minor, best_major - best_minor, key.confidence,
                            float(key.mode == "minor")], rotated])


def distinct_onsets(start: np.ndarray) -> np.ndarray:
    """The distinct onset times (ascending) of notes starting at ``start`` (s): onsets on the same 10-ms step are
    one onset (a chord's notes rarely start at exactly the same time)."""
    return np.unique(np.round(np.asarray(start, dtype=np.float64), 2))


def note_statistics(notes: np.ndarray) -> np.ndarray:
    """Performance statistics of notes (N, 4), scaled to order one: (len(NOTE_STATISTIC_NAMES),) float64.

    Note density in tens of notes per second (over the notes' span, at least 1 s); velocity mean and std / 127;
    pitch mean ``(p - 60) / 12`` and std / 12; pitch range / 48; mean note length (s); median inter-onset
    interval (s, onsets within 10 ms merged). Zeros without notes.
    """
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    if notes.shape[0] == 0:
        return np.zeros(len(NOTE_STATISTIC_NAMES))
    start, end, pitch, velocity = notes.T
    span = max(float(end.max() - start.min()), 1.0)
    ioi = np.diff(distinct_onsets(start))
    return np.array([
        len(notes) / span / 10.0, velocity.mean() / 127.0, velocity.std() / 127.0,
        (pitch.mean() - 60.0) / PITCH_MEAN_SCALE, pitch.std() / 12.0, (pitch.max() - pitch.min()) / 48.0,
        np.maximum(end - start, 1e-3).mean(), float(np.median(ioi)) if len(ioi) else 0.0,
    ])
