"""Scores of predicted quadrants against the truth, per clip, as the paper reports them (Sec. IV-A).

A clip's quadrant probabilities are the mean over its windows (:func:`clip_quadrants`); its predicted quadrant
is their argmax. Accuracies are per clip: 4Q, and binary arousal and valence derived from the predicted and true
quadrants (:func:`mer.labels.arousal_valence`), never from the V/A head. Used by the training loop (val metrics
every epoch) and by evaluation (test metrics, the tables).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm

from mer.labels import arousal_valence
from mer.model import group_rows

METRICS: tuple[str, ...] = ("4q", "arousal", "valence")


def quadrant_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Per-clip accuracies ``{"4q", "arousal", "valence"}``, each in [0, 1], of predicted quadrants ``pred``
    (N,) against ``true`` (N,), both 0..3. Arousal and valence are binary and derived from the quadrants."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if true.shape != pred.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError(f"true and pred must be equal-length non-empty 1-D arrays, got {true.shape}, {pred.shape}")
    av_true, av_pred = arousal_valence(true), arousal_valence(pred)  # (N, 2) arousal, valence
    return {
        "4q": float(skm.accuracy_score(true, pred)),
        "arousal": float(skm.accuracy_score(av_true[:, 0], av_pred[:, 0])),
        "valence": float(skm.accuracy_score(av_true[:, 1], av_pred[:, 1])),
    }


def confusion_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(4, 4) int64 counts: row = true quadrant, column = predicted quadrant; sums to the number of clips.
    Every quadrant has its row and column, even one that neither ``true`` nor ``pred`` holds."""
    return skm.confusion_matrix(np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64),
                                labels=np.arange(4)).astype(np.int64)


def clip_quadrants(
    *, names: np.ndarray, quadrant_probs: np.ndarray, quadrants: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-clip predicted and true quadrants from window rows.

    ``names`` (N,), ``quadrant_probs`` (N, 4), ``quadrants`` (N,) the clip's true quadrant on each of its
    windows. Returns (clip names in first-appearance order, predicted (C,) = argmax of the mean window
    probabilities, true (C,)).
    """
    quadrant_probs = np.asarray(quadrant_probs, dtype=np.float64)
    quadrants = np.asarray(quadrants)
    clips, groups = group_rows(np.asarray(names))
    predicted = np.array([int(np.argmax(quadrant_probs[rows].mean(axis=0))) for rows in groups], dtype=np.int64)
    true = np.array([int(quadrants[rows[0]]) for rows in groups], dtype=np.int64)
    return clips, predicted, true


def split_metrics(*, names: np.ndarray, quadrant_probs: np.ndarray, quadrants: np.ndarray) -> dict[str, float]:
    """Per-clip accuracies of one split's window rows: :func:`quadrant_metrics` of :func:`clip_quadrants`
    (inputs as there)."""
    _, predicted, true = clip_quadrants(names=names, quadrant_probs=quadrant_probs, quadrants=quadrants)
    if len(true) == 0:
        raise ValueError("split_metrics needs at least one window")
    return quadrant_metrics(true, predicted)


def attention_by_quadrant(true: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """(4, 3): mean of per-clip attention received (N, 3) over the clips of each true quadrant; NaN when none."""
    true = np.asarray(true, dtype=np.int64)
    out = np.full((4, attention.shape[1]), np.nan)
    for q in range(4):
        if np.any(true == q):
            out[q] = attention[true == q].mean(axis=0)
    return out


def summarise(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` over seeds; std is the sample standard deviation (ddof=1), 0 for one seed."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
