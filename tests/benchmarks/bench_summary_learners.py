"""Benchmark: which learner over the summary descriptors, cross-validated, and what it adds to the network. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_summary_learners.py [--emopia PATH] [--report CROSSVAL_JSON ...]
        [--row ROW ...] [--weight W ...] [--out FILE]

The default's summary head is a logistic regression over a window's key, mode and note descriptors, blended with
the network. A logistic regression cannot say "minor *and* slow": the Q3/Q4 error (sad called relaxed) is such an
interaction. This fits learners over the summary descriptors alone (MIDI only, windows as the model sees them,
:func:`mer.features.extract_features`) with the cross-validation's folds (:func:`mer.evaluation.crossval.fold_splits`
over EMOPIA train + val: fit on the training parts, the hyper-parameter chosen on the selection part, scored on the
held-out part) and reports each learner's held-out 4Q / arousal / valence (a clip's windows averaged), over the
first ``SUMMARY_KEY_SIZE`` descriptors and over all of them (texture too).

With ``--report`` (a ``jobs/evaluate.py --crossval`` report made with the same folds): each ``--row``'s held-out
clip probabilities blended with each learner's (``W`` the learner's share, fixed in advance, not chosen on the
held-out clips), per seed, and the blend's paired 4Q difference from the row with a 95% interval from 10,000 draws
of the songs. Nothing is trained but the learners; the test split is not read.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from mer.config import SUMMARY_KEY_SIZE, SUMMARY_SIZE, FeatureConfig
from mer.evaluation.crossval import fold_splits
from mer.evaluation.intervals import song_bootstrap
from mer.evaluation.results import EvalResult, read_report
from mer.train import emopia_root, load_split
from mer.train.summary_head import C_GRID
from bench_crossval_blend import blend
from emit import emit
from emopia_windows import clip_summaries

# Each learner: its hyper-parameter grid (chosen on the selection part) and how to build it from one value.
LEARNERS: dict[str, tuple[tuple, Callable]] = {
    "logistic": (C_GRID, lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))),
    "rbf_svm": ((0.3, 1.0, 3.0, 10.0), lambda c: make_pipeline(StandardScaler(), CalibratedClassifierCV(
        SVC(C=c, random_state=0), ensemble=False))),
    # A logistic regression over RBF kernel features (Nystroem, every training window a centre up to 1,000):
    # what a torch buffer can hold, unlike the SVM's one-against-one Platt scaling.
    "rbf_logistic": (C_GRID, lambda c: make_pipeline(StandardScaler(), Nystroem(n_components=1000, random_state=0),
                                                    LogisticRegression(C=c, max_iter=5000))),
    "mlp": ((0.1, 1.0, 10.0), lambda alpha: make_pipeline(StandardScaler(), MLPClassifier(
        (64,), alpha=alpha, max_iter=2000, random_state=0))),
    "random_forest": ((2, 5, 10), lambda leaf: RandomForestClassifier(n_estimators=500, min_samples_leaf=leaf,
                                                                      n_jobs=2, random_state=0)),
    "gradient_boosting": ((50, 100, 200), lambda iters: HistGradientBoostingClassifier(
        max_iter=iters, learning_rate=0.05, max_depth=3, l2_regularization=1.0, random_state=0)),
}


def stacked(part: list, windows: dict[str, np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    x = [windows[c.name][:, :width] for c in part]
    y = [np.full(len(w), c.quadrant) for c, w in zip(part, x)]
    return np.concatenate(x), np.concatenate(y)


def clip_probs(model, part: list, windows: dict[str, np.ndarray], width: int) -> np.ndarray:
    """(clips, 4): each clip's window probabilities averaged."""
    probs = []
    for clip in part:
        p = np.zeros((len(windows[clip.name]), 4))
        p[:, model.classes_] = model.predict_proba(windows[clip.name][:, :width])
        probs.append(p.mean(axis=0))
    return np.array(probs)


def accuracy(probs: np.ndarray, part: list) -> float:
    return float(np.mean(probs.argmax(axis=1) == np.array([c.quadrant for c in part])))


def cross_validate(name: str, splits: list, windows: dict[str, np.ndarray], width: int) -> EvalResult:
    """One learner's held-out probabilities over every clip of the folds, pooled as one result."""
    grid, build = LEARNERS[name]
    names, true, probs, chosen = [], [], [], []
    for split in splits:
        x, y = stacked(split["train"], windows, width)
        fits = {value: build(value).fit(x, y) for value in grid}
        best = max(grid, key=lambda v: accuracy(clip_probs(fits[v], split["val"], windows, width), split["val"]))
        chosen.append(best)
        names += [c.name for c in split["test"]]
        true += [c.quadrant for c in split["test"]]
        probs.append(clip_probs(fits[best], split["test"], windows, width))
    return EvalResult(method=name, names=names, true=np.array(true), probs=np.concatenate(probs), seed=0,
                      extra={"chosen": chosen})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emopia", default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--report", type=Path, nargs="*", default=[], help="crossval.json made with the same folds")
    parser.add_argument("--row", nargs="*", default=["default"])
    parser.add_argument("--weight", type=float, nargs="*", default=[0.3, 0.5], help="the learner's share")
    parser.add_argument("--learners", nargs="*", default=list(LEARNERS), choices=list(LEARNERS))
    parser.add_argument("--widths", nargs="*", default=["key_and_notes", "with_texture"],
                        choices=["key_and_notes", "with_texture"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root, config = emopia_root(args.emopia), FeatureConfig()
    clips = [*load_split(root, "train"), *load_split(root, "val")]
    splits = fold_splits(clips, args.folds)
    windows = {clip.name: clip_summaries(clip, config).astype(np.float64) for clip in clips}

    def rounded(values: dict) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}

    result = {"benchmark": "summary_learners", "clips": len(clips), "folds": args.folds, "learners": {}, "blends": {}}
    held_out: dict[str, EvalResult] = {}
    widths = {"key_and_notes": SUMMARY_KEY_SIZE, "with_texture": SUMMARY_SIZE}
    for width_name in args.widths:
        width = widths[width_name]
        for name in args.learners:
            run = cross_validate(name, splits, windows, width)
            held_out[f"{name}/{width_name}"] = run
            result["learners"][f"{name}/{width_name}"] = {
                **rounded({m: run.metrics[m] for m in ("4q", "arousal", "valence")}), "chosen": run.extra["chosen"]}
            print(f"{name}/{width_name}: {run.metrics['4q']:.3f}", flush=True)
    runs: dict[str, list[EvalResult]] = {}
    for path in args.report:
        for row in read_report(path)["methods"]:
            if row["key"] in args.row:
                runs.setdefault(row["key"], []).extend(map(EvalResult.from_dict, row["runs"]))
    for key, seeds in runs.items():
        for learner, run in held_out.items():
            for weight in args.weight:
                blends = [blend([s, run], [1 - weight, weight]) for s in seeds]
                result["blends"][f"{key}+{learner}@{weight}"] = {
                    "seeds": [s.seed for s in seeds],
                    key: rounded({m: float(np.mean([s.metrics[m] for s in seeds])) for m in ("4q", "arousal", "valence")}),
                    "blend": rounded({m: float(np.mean([b.metrics[m] for b in blends]))
                                      for m in ("4q", "arousal", "valence")}),
                    f"blend_4q_minus_{key}": rounded(song_bootstrap(blends, minus=seeds))}
    emit(result, args.out)


if __name__ == "__main__":
    main()
