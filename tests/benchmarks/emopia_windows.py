"""The summaries of an EMOPIA split's windows as the model sees them, from the MIDI alone, for the benchmarks that
read them (bench_mode_cue, bench_summary_regression, bench_summary_learners)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mer.config import FeatureConfig
from mer.features import extract_features, read_midi
from mer.train import Clip, load_split


def clip_summaries(clip: Clip, config: FeatureConfig) -> np.ndarray:
    """(W, SUMMARY_SIZE) float32: the summaries of a clip's windows with notes (where the summary head applies),
    :func:`mer.features.extract_features` without audio."""
    features = extract_features(name=clip.name, midi=read_midi(clip.midi_path.read_bytes(), name=clip.name),
                                audio=None, config=config)
    return features.summary[features.token_lengths > 0]


def summary_windows(root: Path, split: str, config: FeatureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(summary (N, SUMMARY_SIZE) float32 of the split's windows with notes, each window's clip index (N,), each
    clip's quadrant (C,)), in the split's order."""
    summaries, clip_of, quadrants = [], [], []
    for index, clip in enumerate(load_split(root, split)):
        summary = clip_summaries(clip, config)
        summaries.append(summary)
        clip_of.extend([index] * len(summary))
        quadrants.append(clip.quadrant)
    return np.concatenate(summaries), np.array(clip_of), np.array(quadrants)
