"""A window's summary descriptors: the model's fourth input, beside the three branches' (not in the paper).

The summary is three parts, in this order: the key and mode of the window (mer.features.key: Krumhansl–Kessler
correlations, the histogram rotated to the tonic), its note statistics (density, velocity, pitch, note length,
inter-onset interval), and its texture (mer.features.texture: intervals sounding together, register, the top
line, the mode segment by segment, rhythm). The first two parts are the first :data:`mer.config.SUMMARY_KEY_SIZE`
numbers, which is all a model built without ``ModelConfig.summary_texture`` reads. Pure NumPy.
"""
from __future__ import annotations

import numpy as np

from mer.config import SUMMARY_KEY_SIZE, SUMMARY_SIZE
from mer.features.key import (
    KEY_DESCRIPTOR_NAMES, NOTE_STATISTIC_NAMES, PITCH_MEAN_SCALE, chroma_histogram, key_descriptor, note_statistics,
    pitch_class_histogram,
)
from mer.features.texture import REGISTER_NAMES, TEXTURE_NAMES, texture_descriptors

SUMMARY_NAMES = KEY_DESCRIPTOR_NAMES + NOTE_STATISTIC_NAMES + TEXTURE_NAMES
if len(SUMMARY_NAMES) != SUMMARY_SIZE or len(KEY_DESCRIPTOR_NAMES + NOTE_STATISTIC_NAMES) != SUMMARY_KEY_SIZE:
    raise ImportError(f"mer.config says the summary has {SUMMARY_SIZE} descriptors ({SUMMARY_KEY_SIZE} of key and "
                      f"notes); mer.features names {len(SUMMARY_NAMES)}")
PITCH_MEAN_INDEX = SUMMARY_NAMES.index("pitch_mean")
PITCH_INDICES: tuple[int, ...] = (PITCH_MEAN_INDEX, *(SUMMARY_NAMES.index(name) for name in REGISTER_NAMES))
"""The descriptors that move with a transposition, each by one unit per octave (``PITCH_MEAN_SCALE`` semitones)."""
__all__ = ["PITCH_INDICES", "PITCH_MEAN_INDEX", "PITCH_MEAN_SCALE", "SUMMARY_NAMES", "SUMMARY_SIZE",
           "summary_descriptors"]


def summary_descriptors(*, notes: np.ndarray | None, chroma: np.ndarray | None) -> np.ndarray:
    """A window's summary (SUMMARY_SIZE,) float32: key descriptors from the notes when there are any, else
    from the chromagram; note statistics and texture from the notes (zeros without them)."""
    if notes is not None and np.asarray(notes).reshape(-1, 4).shape[0] > 0:
        histogram = pitch_class_histogram(notes)
        statistics, texture = note_statistics(notes), texture_descriptors(notes)
    else:
        histogram = chroma_histogram(chroma) if chroma is not None else np.zeros(12)
        statistics, texture = np.zeros(len(NOTE_STATISTIC_NAMES)), np.zeros(len(TEXTURE_NAMES))
    return np.concatenate([key_descriptor(histogram), statistics, texture]).astype(np.float32)
