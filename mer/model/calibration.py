"""Calibrated quadrant probabilities: temperature scaling fitted on val (Guo et al., ICML 2017).

One scalar ``T`` divides the quadrant logits of every window before the softmax; it changes no argmax (so no
accuracy) and only how sure the model says it is. ``T`` is fitted on the validation split by minimising the
negative log-likelihood of the clip-level probabilities (a clip's windows' probabilities averaged, as tagging
does). Reported: NLL (``sklearn.metrics.log_loss``) and expected calibration error (ECE, equal-width bins over
the top probability) before and after. Pure NumPy + SciPy + scikit-learn.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import log_loss

TEMPERATURE_BOUNDS = (0.05, 20.0)
ECE_BINS = 10


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of ``logits / temperature``, float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def clip_probabilities(window_logits: np.ndarray, groups: np.ndarray, temperature: float = 1.0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip probabilities: the mean of each clip's window softmaxes.

    Args:
        window_logits: (N, K) quadrant logits of N windows.
        groups: (N,) the clip each window belongs to (any hashable labels).

    Returns:
        ``(clips (C,), probabilities (C, K))``, clips in order of first appearance.
    """
    groups = np.asarray(groups)
    clips, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first)
    probs = softmax(window_logits, temperature)
    sums = np.zeros((len(clips), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(clips))[:, None]
    return clips[order], (sums / counts)[order]


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of integer ``labels`` (C,) under ``probabilities`` (C, K). Rows are
    renormalised in float64 first: float32 probabilities (a clip's mean over its windows) miss 1 by rounding,
    which scikit-learn warns about."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    return float(log_loss(labels, probabilities, labels=np.arange(probabilities.shape[1])))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """ECE: over equal-width bins of the top probability, the sample-weighted mean |accuracy - confidence|."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def reliability(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of top probability: mean confidence, accuracy and count (NaN where a bin is empty)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    mean_conf = np.full(bins, np.nan)
    accuracy = np.full(bins, np.nan)
    counts = np.bincount(which, minlength=bins)
    for b in range(bins):
        if counts[b]:
            mean_conf[b] = confidence[which == b].mean()
            accuracy[b] = correct[which == b].mean()
    return mean_conf, accuracy, counts


def fit_temperature(window_logits: np.ndarray, groups: np.ndarray, labels_by_clip: dict) -> float:
    """The temperature minimising the clip-level NLL of the val windows (bounded search over log T).

    ``labels_by_clip`` maps each clip of ``groups`` to its integer label.
    """
    clips, _ = clip_probabilities(window_logits, groups)
    labels = np.array([labels_by_clip[c] for c in clips])

    def objective(log_t: float) -> float:
        return nll(clip_probabilities(window_logits, groups, float(np.exp(log_t)))[1], labels)

    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    found = minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))
