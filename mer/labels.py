"""What the labels and the attention weights mean, written once for every stage that reads them.

The quadrant → binary arousal/valence mapping (training targets, scores, EMOPIA clips, piece labels), the
arousal/valence probabilities that quadrant probabilities imply (the catalog's ``arousal_prob``/``valence_prob``)
and the attention each branch receives (evaluation reports, catalog columns). NumPy only; imports nothing of ours
but :mod:`mer.config`.
"""
from __future__ import annotations

import numpy as np

from mer.config import BRANCHES

QUADRANT_AROUSAL_VALENCE: tuple[tuple[int, int], ...] = ((1, 1), (1, 0), (0, 0), (0, 1))
"""Binary (arousal, valence) of each quadrant, in :data:`~mer.config.QUADRANTS` order: high arousal = Q1/Q2,
positive valence = Q1/Q4 (Russell's circumplex, as EMOPIA labels its clips and the paper scores them)."""


def arousal_valence(quadrants: int | np.ndarray) -> np.ndarray:
    """Binary (arousal, valence) of quadrant indices 0..3 (Q1..Q4): shape ``(*quadrants.shape, 2)``, int64."""
    return np.asarray(QUADRANT_AROUSAL_VALENCE, dtype=np.int64)[np.asarray(quadrants, dtype=np.int64)]


def arousal_valence_probs(quadrant_probs: np.ndarray) -> np.ndarray:
    """P(high arousal) and P(positive valence) implied by quadrant probabilities: ``(..., 2)`` from ``(..., 4)``.

    The quadrants partition the plane, so P(high arousal) = p_q1 + p_q2 and P(positive valence) = p_q1 + p_q4
    (:data:`QUADRANT_AROUSAL_VALENCE`). Derived so, they can never contradict the quadrant probabilities stored
    beside them (a Q3 label with p_q3 = 0.7 has P(high arousal) <= 0.3). Clipped to [0, 1] against float rounding.
    """
    probs = np.asarray(quadrant_probs, dtype=np.float64)
    if probs.shape[-1:] != (len(QUADRANT_AROUSAL_VALENCE),):
        raise ValueError(f"quadrant probabilities must be (..., 4), got {probs.shape}")
    return np.clip(probs @ np.asarray(QUADRANT_AROUSAL_VALENCE, dtype=np.float64), 0.0, 1.0)


def attention_received(attention: np.ndarray) -> np.ndarray:
    """Mean attention each branch *receives*: ``(..., 3)`` from attention matrices ``(..., heads, 3, 3)``.

    ``attention[..., h, q, k]`` is head h's weight of query branch q on key branch k, in BRANCHES order. A present
    branch's query row sums to 1 and an absent (or unbuilt) branch's row is all zero; in a mean over windows, a
    row sums to the fraction of the windows in which that branch was present. Per head, the value of branch k is
    column k summed over the query rows, divided by the rows' total weight — the mean over the present query
    rows, each weighted by how present it is — then averaged over the heads. Each output row sums to 1, or is all
    zero when there is no attention (a model without self-attention emits zeros).
    """
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim < 3 or attention.shape[-2:] != (len(BRANCHES), len(BRANCHES)):
        raise ValueError(f"attention must be (..., heads, 3, 3), got {attention.shape}")
    column_sums = attention.sum(axis=-2)  # (..., heads, 3) summed over the query rows
    row_weight = attention.sum(axis=(-2, -1))[..., None]  # (..., heads, 1) how many query rows are present
    per_head = np.divide(column_sums, row_weight, out=np.zeros_like(column_sums), where=row_weight > 0)
    return per_head.mean(axis=-2)  # (..., 3)
