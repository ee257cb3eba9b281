"""Texture descriptors of a window's notes: what sounds together, the top line, the mode over time, the rhythm.

The key descriptors (mer.features.key) say which key and mode a window's pitch-class histogram fits best; they
cannot say which intervals sound *together* (a minor third over the bass, a tritone), how the melody moves, or
whether the mode changes within the window. These 26 numbers do, from the notes alone:

- ``interval_class_0..11``: of every pair of notes sounding together at an onset, the share whose interval is
  0..11 semitones modulo the octave: how consonant what sounds together is (thirds and fifths against seconds,
  tritones and sevenths), which a pitch-class histogram cannot tell.
- ``polyphony``, ``bass_mean``, ``top_mean``: notes sounding at an onset (/ 4), the lowest and the highest of them
  (MIDI pitch, ``(p - 48) / 12`` and ``(p - 72) / 12``: one unit per octave).
- ``melody_step``, ``melody_up``, ``melody_down``, ``melody_leap``: the top line (highest sounding pitch at each
  onset): mean absolute step / 12, the shares of rising and falling steps and of leaps over a major third.
- ``local_minor``, ``local_mode_mean``, ``local_mode_std``: the window in 5-s segments (those with at least 4
  notes): the share whose best minor-key correlation beats the best major one, and the mean and spread of the
  major-minus-minor margin.
- ``ioi_variation``, ``legato``, ``velocity_trend``, ``onset_density``: std / mean of the inter-onset intervals,
  median note length / median inter-onset interval (capped at 10, / 10), the velocity's linear trend (/ 127 per
  10 s), onsets per second / 10.

All but ``bass_mean`` and ``top_mean`` are key-invariant. Pure NumPy; zeros for a window without notes.
"""
from __future__ import annotations

import numpy as np

from mer.features.key import distinct_onsets, key_correlations, pitch_class_histogram

TEXTURE_NAMES: tuple[str, ...] = (
    *(f"interval_class_{i}" for i in range(12)),
    "polyphony", "bass_mean", "top_mean",
    "melody_step", "melody_up", "melody_down", "melody_leap",
    "local_minor", "local_mode_mean", "local_mode_std",
    "ioi_variation", "legato", "velocity_trend", "onset_density",
)
REGISTER_NAMES: tuple[str, ...] = ("bass_mean", "top_mean")
"""The texture descriptors that move with a transposition: one unit per octave, as ``pitch_mean``."""

PROBE_S = 0.005  # what sounds at an onset is read this long after it: a note released there has stopped
SEGMENT_S = 5.0
SEGMENT_MIN_NOTES = 4
LEAP_SEMITONES = 4


def _sounding_at_onsets(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(onset times (U,), sounding (U, N) bool): which notes sound just after each distinct onset."""
    start, end = notes[:, 0], notes[:, 1]
    onsets = distinct_onsets(start)
    probe = onsets[:, None] + PROBE_S
    return onsets, (start[None, :] <= probe) & (end[None, :] > probe)


def _interval_classes(pitches: np.ndarray, sounding: np.ndarray) -> np.ndarray:
    """(12,) shares of the intervals mod 12 between every pair of notes sounding together, over all onsets."""
    counts = np.zeros(12)
    for row in sounding:
        chord = pitches[row].astype(np.int64)
        if len(chord) > 1:
            upper, lower = np.triu_indices(len(chord), k=1)
            counts += np.bincount(np.abs(chord[upper] - chord[lower]) % 12, minlength=12)
    total = counts.sum()
    return counts / total if total else counts


def _local_mode(notes: np.ndarray) -> tuple[float, float, float]:
    """(share of minor segments, mean and std of the major-minus-minor margin) over the window's 5-s segments."""
    start = notes[:, 0]
    margins = []
    for segment_start in np.arange(start.min(), start.max() + 1e-9, SEGMENT_S):
        inside = (start >= segment_start) & (start < segment_start + SEGMENT_S)
        if inside.sum() >= SEGMENT_MIN_NOTES:
            correlations = key_correlations(pitch_class_histogram(notes[inside]))
            margins.append(correlations[:12].max() - correlations[12:].max())
    if not margins:
        return 0.0, 0.0, 0.0
    margins = np.asarray(margins)
    return float(np.mean(margins < 0)), float(margins.mean()), float(margins.std())


def texture_descriptors(notes: np.ndarray) -> np.ndarray:
    """The texture of a window's notes (N, 4) ``start_s, end_s, pitch, velocity``: (len(TEXTURE_NAMES),) float64
    in that order (module docstring), zeros without notes."""
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    if notes.shape[0] == 0:
        return np.zeros(len(TEXTURE_NAMES))
    start, end, pitch, velocity = notes.T
    onsets, sounding = _sounding_at_onsets(notes)
    sounding = sounding[sounding.any(axis=1)]  # an onset whose notes all last under 5 ms sounds nothing after it
    if len(sounding):
        masked = np.where(sounding, pitch[None, :], np.nan)
        bass, top = np.nanmin(masked, axis=1), np.nanmax(masked, axis=1)
    else:  # only clicks: nothing sounds together, no line to follow
        bass, top = np.full(1, 48.0), np.full(1, 72.0)
    steps = np.diff(top)
    ioi = np.diff(onsets)
    span = max(float(end.max() - start.min()), 1.0)
    trend = float(np.polyfit(start, velocity, 1)[0]) if np.ptp(start) > 0 and len(notes) > 2 else 0.0
    return np.array([
        *_interval_classes(pitch, sounding),
        sounding.sum(axis=1).mean() / 4.0 if len(sounding) else 0.0, (bass.mean() - 48.0) / 12.0,
        (top.mean() - 72.0) / 12.0,
        *((np.abs(steps).mean() / 12.0, np.mean(steps > 0), np.mean(steps < 0),
           np.mean(np.abs(steps) > LEAP_SEMITONES)) if len(steps) else (0.0, 0.0, 0.0, 0.0)),
        *_local_mode(notes),
        ioi.std() / ioi.mean() if len(ioi) else 0.0,
        min(float(np.median(np.maximum(end - start, 1e-3)) / np.median(ioi)), 10.0) / 10.0 if len(ioi) else 0.0,
        trend / 127.0 * 10.0, len(onsets) / span / 10.0,
    ])
