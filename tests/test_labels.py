"""mer.labels: the quadrant → arousal/valence mapping and the attention each branch receives."""
from __future__ import annotations

import numpy as np

from mer.config import QUADRANTS
from mer.labels import QUADRANT_AROUSAL_VALENCE, arousal_valence, attention_received


def test_arousal_is_high_for_q1_q2_and_valence_positive_for_q1_q4() -> None:
    assert len(QUADRANT_AROUSAL_VALENCE) == len(QUADRANTS)
    assert arousal_valence(np.arange(4)).tolist() == [[1, 1], [1, 0], [0, 0], [0, 1]]
    assert arousal_valence(2).tolist() == [0, 0]  # Q3 (sad): low arousal, negative valence
    assert arousal_valence(np.array([[0, 3]])).shape == (1, 2, 2)


def test_attention_received_averages_heads_and_present_query_rows() -> None:
    attention = np.zeros((1, 2, 3, 3))
    attention[0, 0, 0] = [0.5, 0.5, 0.0]  # head 0, symbolic query
    attention[0, 0, 2] = [0.1, 0.3, 0.6]  # head 0, tone query (harmony absent: its row stays 0)
    attention[0, 1, 0] = [1.0, 0.0, 0.0]
    attention[0, 1, 2] = [0.0, 0.0, 1.0]
    received = attention_received(attention)
    # Head 0: columns (0.3, 0.4, 0.3); head 1: (0.5, 0, 0.5); mean over heads:
    np.testing.assert_allclose(received, [[0.4, 0.2, 0.4]])
    np.testing.assert_allclose(attention_received(np.zeros((2, 4, 3, 3))), 0.0)  # no attention: all zero


def test_attention_received_of_a_mean_over_windows_weights_each_branch_by_its_presence() -> None:
    # Two windows, one head: in the first all three branches are present, in the second the symbolic one is not
    # (a window without notes). The mean matrix's symbolic row sums to 1/2.
    first = np.array([[[0.2, 0.4, 0.4], [0.2, 0.4, 0.4], [0.2, 0.4, 0.4]]])
    second = np.array([[[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]])
    mean = (first + second) / 2  # (1, 3, 3)
    received = attention_received(mean)
    assert abs(received.sum() - 1.0) < 1e-12
    # Column sums (0.3, 1.1, 1.1) over a row weight of 2.5 (1/2 + 1 + 1).
    np.testing.assert_allclose(received, [0.12, 0.44, 0.44])
    # Per window first, then the mean, is the same quantity when every window has the same branches present:
    np.testing.assert_allclose(attention_received(np.stack([first, first])).mean(axis=0), attention_received(first))
