"""Benchmark: a clip's windows merged with equal weights (today) or weighted by the seconds each covers. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_window_merge.py MODEL [MODEL ...] [--cache-dir DIR] [--out FILE]

A clip's label is the mean of its windows' quadrant probabilities (:func:`mer.model.aggregate_windows`). EMOPIA's
clips last 28-60 s and windows 30 s, so a 40-s clip is a full window and a 10-s one, zero-padded, and both count
the same. This scores each model on the **val split only** with the same window probabilities merged two ways —
equal weights, and weights proportional to the seconds of the clip a window covers (``min(window, duration -
start)``) — so a change of the rule can be chosen on val. The test split is not read.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import ray

from mer.evaluation import method_key, window_predictions
from mer.features import FeatureCache
from mer.model import group_rows, load_artifact
from mer.train import emopia_root, extract_clips, load_split, window_table
from emit import emit


def window_probabilities(path: str, clips: list, cache: FeatureCache) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """The model's val window table, its (N, 4) quadrant probabilities, each window's covered seconds, its meta."""
    artifact = load_artifact(path)
    config = artifact.config.features
    items = extract_clips(clips, config=config, cache=cache, progress=False).clips
    table = window_table(items)
    probs, _ = window_predictions(artifact, table, device="cpu", batch_size=32)
    duration = np.concatenate([np.full(c.features.num_windows, c.features.duration) for c in items])
    covered = np.clip(duration - table["window_start"], 1e-3, config.window_seconds)
    meta = {"version": artifact.version, "method": method_key(artifact.config),
            "branches": list(artifact.config.model.branches), "seed": artifact.config.training.seed}
    return table, probs, covered, meta


def merged_accuracy(table: dict, probs: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Clip accuracy and per-clip predicted quadrant with each clip's windows weighted by ``weights``."""
    _, groups = group_rows(table["name"])
    predicted = np.array([int(np.argmax((probs[rows] * weights[rows, None]).sum(axis=0))) for rows in groups])
    truth = np.array([table["quadrant"][rows[0]] for rows in groups])
    return float((predicted == truth).mean()), predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model artifact folders")
    parser.add_argument("--emopia", default=None)
    parser.add_argument("--cache-dir", default="./mer_runs/cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # address="local": a cluster of its own, never a training run's that happens to be up on this machine.
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    clips = load_split(emopia_root(args.emopia), "val")
    cache = FeatureCache(args.cache_dir)
    models = []
    for path in args.models:
        table, probs, covered, meta = window_probabilities(path, clips, cache)
        equal, equal_pred = merged_accuracy(table, probs, np.ones_like(covered))
        by_seconds, seconds_pred = merged_accuracy(table, probs, covered)
        models.append({**meta, "val_clips": int(equal_pred.shape[0]), "val_4q_equal": round(equal, 4),
                       "val_4q_by_seconds": round(by_seconds, 4),
                       "clips_changed": int((equal_pred != seconds_pred).sum()),
                       "clips_gained": int(round((by_seconds - equal) * equal_pred.shape[0]))})
    gains = [m["clips_gained"] for m in models]
    emit({"benchmark": "window_merge", "split": "val", "models": models,
          "mean_val_4q_equal": round(float(np.mean([m["val_4q_equal"] for m in models])), 4),
          "mean_val_4q_by_seconds": round(float(np.mean([m["val_4q_by_seconds"] for m in models])), 4),
          "clips_gained_per_model": gains}, args.out)


if __name__ == "__main__":
    main()
