"""mer.train.scores: per-clip accuracies as the paper scores them, arousal and valence derived from the quadrant."""
from __future__ import annotations

import numpy as np
import pytest

from mer.train.scores import confusion_matrix, quadrant_metrics, split_metrics


def test_metrics_derive_arousal_and_valence_from_the_quadrants() -> None:
    true = np.array([0, 0, 1, 2, 3, 3])
    pred = np.array([0, 1, 1, 3, 0, 2])
    # Arousal high = Q1/Q2: true 1 1 1 0 0 0, pred 1 1 1 0 1 0 -> 5/6.
    # Valence positive = Q1/Q4: true 1 1 0 0 1 1, pred 1 0 0 1 1 0 -> 3/6.
    assert quadrant_metrics(true, pred) == pytest.approx({"4q": 2 / 6, "arousal": 5 / 6, "valence": 3 / 6})
    matrix = confusion_matrix(true, pred)
    assert matrix.sum() == 6 and np.trace(matrix) == 2
    assert matrix[3].tolist() == [1, 0, 1, 0]  # the two Q4 clips: one called Q1, one Q3


def test_split_metrics_confuse_q3_for_q2_as_arousal_error_only() -> None:
    metrics = split_metrics(names=np.array(["x"]), quadrant_probs=np.array([[0.0, 0.1, 0.9, 0.0]]),
                            quadrants=np.array([1]))
    assert metrics == {"4q": 0.0, "arousal": 0.0, "valence": 1.0}  # Q3 vs Q2: both negative valence
