"""Benchmark: what the summary descriptors alone say about the quadrant, with and without texture. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_summary_regression.py [--emopia PATH] [--out FILE]

The default configuration's summary head is a logistic regression over a window's summary descriptors, fitted on
the training windows and blended with the network (mer.train.summary_head). This fits that regression alone — a
standardiser and a multinomial logistic regression on the train windows with notes — over the summary's first
``SUMMARY_KEY_SIZE`` descriptors (key, mode, note statistics: what the summary was until 2026-12-07) and over all
of them (with the texture descriptors of mer.features.texture), and scores each on val per clip (a clip's window
probabilities averaged) for every C of the head's grid. Window summaries as the model sees them
(:func:`mer.features.extract_features`, MIDI only, no audio). The test split is not read.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mer.config import SUMMARY_KEY_SIZE, SUMMARY_SIZE, FeatureConfig
from mer.train import emopia_root
from mer.train.summary_head import C_GRID
from emit import emit
from emopia_windows import summary_windows


def split_windows(root: Path, split: str, config: FeatureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(summary (N, SUMMARY_SIZE), quadrant (N,), clip index (N,)) over the split's windows with notes."""
    summary, clip_of, quadrants = summary_windows(root, split, config)  # windows with notes: where the head applies
    return summary.astype(np.float64), quadrants[clip_of], clip_of


def val_accuracy_by_c(train: tuple, val: tuple, width: int) -> dict[str, float]:
    """Clip-level val 4Q accuracy of the regression over the first ``width`` descriptors, for each C."""
    (x_train, y_train, _), (x_val, y_val, clip_of) = train, val
    scaler = StandardScaler().fit(x_train[:, :width])
    scores = {}
    for c in C_GRID:
        fit = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x_train[:, :width]), y_train)
        probs = fit.predict_proba(scaler.transform(x_val[:, :width]))
        clips = np.unique(clip_of)
        right = [probs[clip_of == k].mean(axis=0).argmax() == y_val[clip_of == k][0] for k in clips]
        scores[str(c)] = round(float(np.mean(right)), 4)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emopia", default=None)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    root, config = emopia_root(args.emopia), FeatureConfig()
    train, val = split_windows(root, "train", config), split_windows(root, "val", config)
    rows = {}
    for name, width in (("key_and_notes", SUMMARY_KEY_SIZE), ("with_texture", SUMMARY_SIZE)):
        by_c = val_accuracy_by_c(train, val, width)
        rows[name] = {"descriptors": width, "val_4q_by_c": by_c, "best_val_4q": max(by_c.values())}
    emit({"benchmark": "summary_regression", "split_scored": "val", "train_windows": int(len(train[1])),
          "val_windows": int(len(val[1])), "val_clips": int(len(np.unique(val[2]))), **rows},
         Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
