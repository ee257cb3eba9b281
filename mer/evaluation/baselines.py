"""The paper's linear baselines (Table I): Symbolic-LR and Audio-LR, after EMOPIA (Hung et al., ISMIR 2021, Sec. 5).

Each clip becomes one vector of hand-crafted, clip-level features; a standardiser and a multinomial logistic
regression map it to the four quadrants. The regularisation strength ``C`` is chosen on the validation split
only; arousal and valence are derived from the predicted quadrant, as for the deep models.

- Symbolic-LR (:func:`symbolic_features`): note and onset density, inter-onset intervals, pitch statistics,
  a duration-weighted pitch-class histogram and its Krumhansl–Kessler major/minor key correlations, velocity
  and note-length statistics, mean polyphony — from the clip's piano notes (``mer.features.midi.piano_notes``).
- Audio-LR (:func:`audio_features`): mean and standard deviation over time of the chromagram and the MFCCs,
  over the real (not padding) frames of the clip's feature windows. Here the audio is rendered from the MIDI.

Pure NumPy + scikit-learn: no torch, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mer.config import FeatureConfig
from mer.errors import BadInputError
from mer.features import distinct_onsets, key_correlations, pitch_class_histogram

if TYPE_CHECKING:  # only for the annotation: the features side is imported by whoever builds ItemFeatures
    from mer.features import ItemFeatures

C_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Inverse regularisation strengths tried; the one with the best validation 4Q accuracy wins."""

SYMBOLIC_FEATURE_NAMES: tuple[str, ...] = (
    "note_density", "onset_density", "ioi_mean", "ioi_std",
    "pitch_mean", "pitch_std", "pitch_min", "pitch_max", "pitch_range",
    *(f"pitch_class_{i}" for i in range(12)),
    "major_key_correlation", "minor_key_correlation", "major_minus_minor",
    "velocity_mean", "velocity_std", "note_length_mean", "note_length_std", "polyphony",
)


def symbolic_features(notes: np.ndarray, *, name: str = "notes") -> np.ndarray:
    """Clip-level symbolic features of a piece's notes.

    ``notes`` is (N, 4) float, columns ``start_s, end_s, pitch, velocity`` (``mer.features.midi.piano_notes``).
    Returns float64 (len(SYMBOLIC_FEATURE_NAMES),) in that order: densities in notes (onsets) per second,
    inter-onset intervals and note lengths in seconds, pitches as MIDI numbers, velocities 0..127, the pitch-class
    histogram weighted by note length (sums to 1), polyphony = mean number of sounding notes. Raises
    :class:`BadInputError` for an empty or malformed note array.
    """
    notes = np.asarray(notes, dtype=np.float64)
    if notes.ndim != 2 or notes.shape[1] != 4:
        raise BadInputError(name, f"notes must be an (N, 4) array, got shape {notes.shape}")
    if len(notes) == 0:
        raise BadInputError(name, "no notes to describe")
    start, end, pitch, velocity = notes.T
    length = np.maximum(end - start, 1e-3)  # a zero-length note still sounds (and counts) a little
    span = max(float(end.max() - start.min()), 1e-3)  # seconds from the first onset to the last release

    onsets = distinct_onsets(start)
    ioi = np.diff(onsets)
    ioi_mean, ioi_std = (float(ioi.mean()), float(ioi.std())) if len(ioi) else (0.0, 0.0)

    histogram = pitch_class_histogram(notes)
    correlations = key_correlations(histogram)  # (24,): 12 major keys, then 12 minor
    major, minor = float(correlations[:12].max()), float(correlations[12:].max())

    return np.array([
        len(notes) / span, len(onsets) / span, ioi_mean, ioi_std,
        pitch.mean(), pitch.std(), pitch.min(), pitch.max(), pitch.max() - pitch.min(),
        *histogram,
        major, minor, major - minor,
        velocity.mean(), velocity.std(), length.mean(), length.std(), length.sum() / span,
    ], dtype=np.float64)


def audio_feature_names(config: FeatureConfig) -> tuple[str, ...]:
    """Names of :func:`audio_features`' columns: chroma means, chroma stds, MFCC means, MFCC stds."""
    return (*(f"chroma_mean_{i}" for i in range(12)), *(f"chroma_std_{i}" for i in range(12)),
            *(f"mfcc_mean_{i}" for i in range(config.n_mfcc)), *(f"mfcc_std_{i}" for i in range(config.n_mfcc)))


def real_frames(features: "ItemFeatures") -> np.ndarray:
    """Which chroma/MFCC frames of each window hold signal rather than padding: bool (W, F).

    Windows are zero-padded past the audio's end (``mer.features.extract.frame_slice``); a real MFCC frame is never
    all zeros (its 0th coefficient is a log energy, very negative even for silence), so an all-zero MFCC
    column marks padding exactly.
    """
    return np.any(np.asarray(features.mfcc) != 0, axis=1)


def audio_features(features: "ItemFeatures", *, config: FeatureConfig) -> np.ndarray:
    """Clip-level audio features: mean and std over time of the chromagram and of the MFCCs.

    ``features`` is the clip's :class:`~mer.features.ItemFeatures` (chroma (W, 12, F), mfcc (W, n_mfcc, F));
    the frames of all windows are pooled, leaving out the zero padding. Returns float64
    (2 * (12 + n_mfcc),) in :func:`audio_feature_names` order. Raises :class:`BadInputError` when the clip
    has no audio features (``present`` says harmony and tone are missing).
    """
    present = np.asarray(features.present, dtype=bool)
    if not (present[1] and present[2]):
        raise BadInputError(features.name, "no audio features (chromagram/MFCCs) to describe")
    real = real_frames(features)  # (W, F)
    if not real.any():
        raise BadInputError(features.name, "the chromagram/MFCC windows hold no frames")
    # (12 + n_mfcc, total real frames): every window's real frames side by side.
    frames = np.concatenate([
        np.concatenate([features.chroma[w][:, real[w]], features.mfcc[w][:, real[w]]], axis=0)
        for w in range(len(real))
    ], axis=1).astype(np.float64)
    chroma, mfcc = frames[:12], frames[12:]
    return np.concatenate([chroma.mean(axis=1), chroma.std(axis=1), mfcc.mean(axis=1), mfcc.std(axis=1)])


@dataclass
class LinearBaseline:
    """A fitted standardiser + multinomial logistic regression, with the C chosen on validation.

    ``val_accuracy`` maps every C tried to its validation 4Q accuracy.
    """

    pipeline: Pipeline
    c: float
    val_accuracy: dict[float, float] = field(default_factory=dict)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Quadrant probabilities (N, 4) of feature rows ``x`` (N, D); columns Q1..Q4."""
        probs = self.pipeline.predict_proba(np.asarray(x, dtype=np.float64))
        # A training set missing a quadrant yields fewer columns: put them back in Q1..Q4 order.
        full = np.zeros((len(probs), 4))
        full[:, self.pipeline.classes_.astype(np.int64)] = probs
        return full


def fit_linear_baseline(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                        c_grid: tuple[float, ...] = C_GRID, seed: int = 0) -> LinearBaseline:
    """Fit one logistic regression per C on the training rows; keep the one with the best val 4Q accuracy.

    ``x_*`` (N, D) float, ``y_*`` (N,) quadrant indices 0..3. Ties go to the smaller C (stronger
    regularisation). The model is fitted on the training split only: validation is used for the choice, never
    for the weights. ``seed`` is passed as ``random_state`` (the lbfgs fit is deterministic, so seeds agree).
    """
    x_train, x_val = np.asarray(x_train, dtype=np.float64), np.asarray(x_val, dtype=np.float64)
    y_train, y_val = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError("fit_linear_baseline needs training and validation rows")
    if len(np.unique(y_train)) < 2:
        raise ValueError("fit_linear_baseline needs at least two quadrants in the training rows")
    best: LinearBaseline | None = None
    scores: dict[float, float] = {}
    for c in sorted(c_grid):
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
        pipeline.fit(x_train, y_train)
        scores[c] = float(np.mean(pipeline.predict(x_val) == y_val))
        if best is None or scores[c] > scores[best.c]:
            best = LinearBaseline(pipeline=pipeline, c=c)
    assert best is not None
    best.val_accuracy = scores
    return best
