"""How far a test accuracy can be trusted: intervals by resampling EMOPIA's test *songs*.

EMOPIA's test split is 86 clips cut from far fewer songs, and a song's clips share their key, tempo and
performer, so they are right or wrong together: the clips are not independent draws, the songs are closer to it.
:func:`song_bootstrap` resamples the songs (with replacement, all of a drawn song's clips together) and reads the
spread of a row's accuracy — its mean over seeds, as the report gives it — or of the difference between two rows
scored on the same clips. Per-seed spread (the report's ±) is the other, separate source of noise.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mer.evaluation.results import EvalResult
from mer.labels import arousal_valence
from mer.train import song_of

RESAMPLES = 10_000
LEVEL = 0.95


def _correct(result: EvalResult, metric: str) -> np.ndarray:
    """(clips,) 1.0 where the run's predicted quadrant is right on ``metric`` ("4q", "arousal", "valence")."""
    pred, true = np.asarray(result.probs).argmax(axis=1), np.asarray(result.true)
    if metric == "4q":
        return (pred == true).astype(np.float64)
    column = {"arousal": 0, "valence": 1}[metric]
    return (arousal_valence(pred)[:, column] == arousal_valence(true)[:, column]).astype(np.float64)


def _by_song(runs: Sequence[EvalResult], metric: str, songs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(songs,) sum over a song's clips of the accuracy averaged over seeds, and (songs,) its clip count."""
    names = list(runs[0].names)
    if any(list(r.names) != names for r in runs):
        raise ValueError("every run of a row must be scored on the same clips in the same order")
    mean_correct = np.mean([_correct(r, metric) for r in runs], axis=0)  # (clips,)
    index = {song: i for i, song in enumerate(songs)}
    rows = np.array([index[song_of(n)] for n in names])
    return np.bincount(rows, mean_correct, len(songs)), np.bincount(rows, minlength=len(songs)).astype(np.float64)


def song_bootstrap(runs: Sequence[EvalResult], *, minus: Sequence[EvalResult] | None = None, metric: str = "4q",
                   resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict[str, Any]:
    """The ``level`` percentile interval of a row's accuracy (mean over its seeds), or of ``runs`` minus ``minus``
    (two rows on the same clips: each row's mean over its own seeds, songs drawn once for both), from ``resamples``
    draws of the test songs. Returns ``{"estimate", "low", "high", "level", "songs", "clips", "resamples"}``."""
    if not runs or (minus is not None and not minus):
        raise ValueError("song_bootstrap needs at least one run per row")
    if minus is not None and sorted(minus[0].names) != sorted(runs[0].names):
        raise ValueError("the two rows were scored on different clips")
    songs = sorted({song_of(n) for n in runs[0].names})
    correct, clips = _by_song(runs, metric, songs)
    if minus is not None:
        correct = correct - _by_song(minus, metric, songs)[0]
    counts = np.random.default_rng(seed).multinomial(len(songs), np.full(len(songs), 1 / len(songs)), resamples)
    draws = (counts @ correct) / (counts @ clips)  # (resamples,): a drawn song weighs as often as it was drawn
    tail = (1 - level) / 2 * 100
    return {"estimate": float(correct.sum() / clips.sum()), "low": float(np.percentile(draws, tail)),
            "high": float(np.percentile(draws, 100 - tail)), "level": level, "songs": len(songs),
            "clips": int(clips.sum()), "resamples": resamples}
