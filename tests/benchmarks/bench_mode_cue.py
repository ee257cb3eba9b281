"""Benchmark: how far the key finder's mode separates EMOPIA's quadrants, on the train and val splits. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_mode_cue.py [--emopia PATH] [--out FILE]

The default configuration's errors are mostly calm pieces: sad (Q3) clips called relaxed (Q4). Valence among
low-arousal pieces is what major vs minor signals most directly, so this asks how well it can: for every window of
the two splits (the model's 30-s windows), the Krumhansl-Kessler key finder's mode (``is_minor``) and the margin
of the best major over the best minor correlation (``major_minus_minor``), as the model's summary descriptors hold
them (:func:`mer.features.extract_features`, MIDI only). Then a one-feature logistic regression on that margin, fitted
on the train windows, scored per clip on val (a clip's windows averaged): Q3 against Q4 among the calm clips,
and valence over all clips. MIDI only; the test split is not read.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from mer.config import QUADRANTS, FeatureConfig
from mer.features import SUMMARY_NAMES
from mer.train import emopia_root
from emit import emit
from emopia_windows import summary_windows

IS_MINOR, MARGIN = SUMMARY_NAMES.index("is_minor"), SUMMARY_NAMES.index("major_minus_minor")
POSITIVE_VALENCE = (0, 3)  # Q1 and Q4


def split_windows(root: Path, split: str, config: FeatureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_minor, margin, clip index) per window with notes, and the clips' quadrants."""
    summary, clip_of, quadrants = summary_windows(root, split, config)
    return summary[:, IS_MINOR], summary[:, MARGIN], clip_of, quadrants


def by_quadrant(minor: np.ndarray, margin: np.ndarray, clip_of: np.ndarray, quadrants: np.ndarray) -> dict:
    window_quadrant = quadrants[clip_of]
    return {q: {"windows": int((window_quadrant == i).sum()),
                "share_minor": round(float(minor[window_quadrant == i].mean()), 3),
                "mean_major_minus_minor": round(float(margin[window_quadrant == i].mean()), 4)}
            for i, q in enumerate(QUADRANTS)}


def clip_accuracy(fit: LogisticRegression, margin: np.ndarray, clip_of: np.ndarray, targets: np.ndarray,
                  clips: np.ndarray) -> float:
    """Accuracy over ``clips`` of ``fit`` on their windows' margins, each clip's window probabilities averaged."""
    probs = fit.predict_proba(margin[:, None])[:, 1]
    right = [(probs[clip_of == c].mean() > 0.5) == targets[c] for c in clips if (clip_of == c).any()]
    return round(float(np.mean(right)), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emopia", default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    config, root = FeatureConfig(), emopia_root(args.emopia)
    train, val = split_windows(root, "train", config), split_windows(root, "val", config)
    result: dict = {"windows_by_quadrant": {"train": by_quadrant(*train), "val": by_quadrant(*val)}}

    for name, positive, among in (("q3_vs_q4_among_calm_val_clips", (3,), (2, 3)),
                                  ("valence_all_val_clips", POSITIVE_VALENCE, (0, 1, 2, 3))):
        (_, train_margin, train_clip, train_q), (_, val_margin, val_clip, val_q) = train, val
        keep = np.isin(train_q[train_clip], among)
        fit = LogisticRegression().fit(train_margin[keep, None], np.isin(train_q[train_clip[keep]], positive))
        val_clips = np.flatnonzero(np.isin(val_q, among))
        result[name] = {"clips": int(len(val_clips)),
                        "mode_margin_accuracy": clip_accuracy(fit, val_margin, val_clip, np.isin(val_q, positive),
                                                              val_clips),
                        "majority_class_accuracy": round(float(max(np.isin(val_q[val_clips], positive).mean(),
                                                                   1 - np.isin(val_q[val_clips], positive).mean())), 3)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
