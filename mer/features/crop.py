"""Token crops: a training window's Bi-GRU input taken from a random place in the window (issue 10: the token cap
and windowing).

A model with ``symbolic_max_tokens = N`` reads only a window's first N tokens; a dense 30-s window holds up to
1,024, so half of such a window is never seen in training. A crop moves that reading frame: each window longer
than N gives N consecutive tokens starting at a random offset, drawn anew at every step, so the network learns
from every part of the window while inference keeps reading the first N (deterministic labels). The window's
label and its summary descriptors (key, mode, note statistics of the whole window) stay. Pure NumPy.
"""
from __future__ import annotations

import numpy as np


def crop_offsets(lengths: np.ndarray, span: int, rng: np.random.Generator) -> np.ndarray:
    """A start offset per window: uniform in ``0 .. length - span`` for windows longer than ``span``, 0 for the
    rest."""
    lengths = np.asarray(lengths, dtype=np.int64)
    room = np.maximum(lengths - span, 0)
    return (rng.random(lengths.shape[0]) * (room + 1)).astype(np.int64)


def crop_batch(batch: dict[str, np.ndarray], *, span: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of windows whose ``tokens`` (B, L) each hold ``span`` consecutive tokens of the original, from a
    random offset (:func:`crop_offsets`), left-aligned and padded as before; ``token_lengths`` become
    ``min(length, span)``. Every other key passes unchanged. Returns a new dict; the input is not modified.

    Raises:
        ValueError: ``span`` < 1.
    """
    if span < 1:
        raise ValueError(f"a crop needs a span of at least one token, got {span}")
    tokens = np.asarray(batch["tokens"])
    if tokens.shape[0] == 0:
        return dict(batch)
    lengths = np.asarray(batch["token_lengths"], dtype=np.int64)
    offsets = crop_offsets(lengths, span, rng)
    width = min(tokens.shape[1], span)
    # offset + span <= length for a cropped row; a shorter row keeps offset 0 and its own padding.
    cropped = np.stack([tokens[row, offset: offset + width] for row, offset in enumerate(offsets)])
    new_lengths = np.minimum(lengths, span)
    out = dict(batch)
    out.update(tokens=cropped, token_lengths=new_lengths.astype(np.asarray(batch["token_lengths"]).dtype))
    return out
