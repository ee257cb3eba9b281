"""Window predictions merged into pieces: a piece's label is the mean of its windows' probabilities, and the
per-window values are kept as the piece's timeline. A piece's arousal and valence follow from its quadrant
(:func:`mer.labels.arousal_valence`).

NumPy only, no torch: the tagging driver merges the windows that come back from the inference actors, and must not
pay for importing torch (1.3 s of CPU on the machine the actors share) to do it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from mer.config import QUADRANTS
from mer.labels import arousal_valence


@dataclass(frozen=True)
class PiecePrediction:
    """One piece's emotion: the mean over its windows, and the windows themselves as a timeline.

    ``quadrant`` is the argmax (0..3 = Q1..Q4) of ``quadrant_probs`` (4,), the mean of the windows' softmax
    probabilities; ``arousal``/``valence`` (0/1) follow from that quadrant (as the paper scores them);
    ``arousal_prob``/``valence_prob`` are the V/A head's mean probabilities; ``attention`` (heads, 3, 3) the
    mean attention weights. The timeline arrays have one row per window, in time order: ``window_starts`` (W,)
    seconds, ``window_quadrant_probs`` (W, 4), ``window_arousal_probs`` (W,), ``window_valence_probs`` (W,).
    """

    name: str
    quadrant: int
    quadrant_probs: np.ndarray
    arousal: int
    valence: int
    arousal_prob: float
    valence_prob: float
    attention: np.ndarray
    window_starts: np.ndarray
    window_quadrant_probs: np.ndarray
    window_arousal_probs: np.ndarray
    window_valence_probs: np.ndarray

    @property
    def label(self) -> str:
        """The quadrant's name, ``"Q1"`` .. ``"Q4"``."""
        return QUADRANTS[self.quadrant]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists instead of arrays; the timeline as one dict per window."""
        return {
            "name": self.name,
            "quadrant": self.label,
            "quadrant_probs": [float(p) for p in self.quadrant_probs],
            "arousal": self.arousal,
            "valence": self.valence,
            "arousal_prob": self.arousal_prob,
            "valence_prob": self.valence_prob,
            "attention": self.attention.tolist(),
            "timeline": [
                {
                    "start": float(start),
                    "quadrant": QUADRANTS[int(np.argmax(probs))],
                    "quadrant_probs": [float(p) for p in probs],
                    "arousal_prob": float(arousal),
                    "valence_prob": float(valence),
                }
                for start, probs, arousal, valence in zip(
                    self.window_starts, self.window_quadrant_probs, self.window_arousal_probs,
                    self.window_valence_probs, strict=True,
                )
            ],
        }


def group_rows(names: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Distinct names (N,) in order of first appearance, and each one's row indices: how window rows become
    pieces (or clips) wherever they are merged."""
    names = np.asarray(names).astype(str)
    unique, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rows_of = [np.flatnonzero(inverse == u) for u in range(len(unique))]
    return [str(unique[u]) for u in order], [rows_of[u] for u in order]


def aggregate_windows(predictions: Mapping[str, np.ndarray]) -> list[PiecePrediction]:
    """Merge window predictions into one :class:`PiecePrediction` per piece.

    Args:
        predictions: window rows as stacked arrays (the output of :func:`predict_windows`, possibly concatenated
            over batches): ``name`` (N,), ``window_start`` (N,) seconds, ``quadrant_probs`` (N, 4),
            ``arousal_prob`` (N,), ``valence_prob`` (N,), ``attention`` (N, h, 3, 3). A piece's windows may
            be spread over the arrays in any order; ``window_index`` (N,) orders them when given, else
            ``window_start``.

    Returns:
        Pieces in order of first appearance. A piece's probabilities are the means over its windows.
    """
    names = np.asarray(predictions["name"])
    starts = np.asarray(predictions["window_start"], dtype=np.float64)
    order_key = np.asarray(predictions["window_index"]) if "window_index" in predictions else starts
    quadrant_probs = np.asarray(predictions["quadrant_probs"], dtype=np.float32)
    arousal = np.asarray(predictions["arousal_prob"], dtype=np.float32)
    valence = np.asarray(predictions["valence_prob"], dtype=np.float32)
    attention = np.asarray(predictions["attention"], dtype=np.float32)
    pieces = []
    for name, rows in zip(*group_rows(names), strict=True):
        rows = rows[np.argsort(order_key[rows], kind="stable")]  # time order
        probs = quadrant_probs[rows].mean(axis=0)  # (4,)
        quadrant = int(np.argmax(probs))
        arousal_of, valence_of = arousal_valence(quadrant)  # as the paper scores them: from the quadrant
        pieces.append(
            PiecePrediction(
                name=name,
                quadrant=quadrant,
                quadrant_probs=probs,
                arousal=int(arousal_of),
                valence=int(valence_of),
                arousal_prob=float(arousal[rows].mean()),
                valence_prob=float(valence[rows].mean()),
                attention=attention[rows].mean(axis=0),
                window_starts=starts[rows],
                window_quadrant_probs=quadrant_probs[rows],
                window_arousal_probs=arousal[rows],
                window_valence_probs=valence[rows],
            )
        )
    return pieces
