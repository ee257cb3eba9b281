"""Song-bootstrap intervals of a test accuracy: they contain the report's number, collapse when nothing varies, and
widen when a song's clips are right or wrong together."""
from __future__ import annotations

import numpy as np
import pytest

from mer.evaluation.intervals import song_bootstrap
from mer.evaluation.results import EvalResult


def row(right: np.ndarray, *, songs: int, clips_per_song: int, seed: int = 0) -> EvalResult:
    """A run on ``songs`` x ``clips_per_song`` clips (song-major order), right where ``right`` is True."""
    names = [f"Q1_song{s}_{c}" for s in range(songs) for c in range(clips_per_song)]
    true = np.arange(len(names)) % 4
    pred = np.where(right, true, (true + 1) % 4)
    return EvalResult(method="x", names=names, true=true, probs=np.eye(4)[pred], attention=None,
                      branches=("symbolic",), seed=seed)


def test_the_estimate_is_the_mean_over_seeds_and_lies_in_its_interval(rng):
    runs = [row(rng.random(40) < 0.6, songs=10, clips_per_song=4, seed=s) for s in range(3)]
    interval = song_bootstrap(runs)
    expected = np.mean([np.mean(r.probs.argmax(1) == r.true) for r in runs])
    assert interval["estimate"] == pytest.approx(expected)
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert (interval["songs"], interval["clips"]) == (10, 40)


def test_nothing_varies_so_the_interval_is_a_point():
    always = [row(np.ones(12, bool), songs=4, clips_per_song=3)]
    assert song_bootstrap(always)["low"] == song_bootstrap(always)["high"] == 1.0
    runs = [row(np.arange(12) % 2 == 0, songs=4, clips_per_song=3)]
    same = song_bootstrap(runs, minus=runs)
    assert same["estimate"] == same["low"] == same["high"] == 0.0


def test_songs_right_or_wrong_together_widen_the_interval_at_the_same_accuracy():
    songs, per_song = 20, 4
    spread = row(np.tile([True, True, False, False], songs), songs=songs, clips_per_song=per_song)  # every song 1/2
    together = row(np.repeat(np.arange(songs) % 2 == 0, per_song), songs=songs, clips_per_song=per_song)
    a, b = song_bootstrap([spread]), song_bootstrap([together])
    assert a["estimate"] == b["estimate"] == 0.5
    assert b["high"] - b["low"] > a["high"] - a["low"]


def test_arousal_and_valence_count_a_quadrant_wrong_on_the_other_axis_as_right():
    names = ["Q1_a_0", "Q1_b_0"]
    # Q1 called Q2: arousal right (both high), valence wrong; Q1 called Q4: arousal wrong, valence right.
    run = EvalResult(method="x", names=names, true=np.array([0, 0]), probs=np.eye(4)[[1, 3]], attention=None,
                     branches=("symbolic",), seed=0)
    assert song_bootstrap([run], metric="4q")["estimate"] == 0.0
    assert song_bootstrap([run], metric="arousal")["estimate"] == 0.5
    assert song_bootstrap([run], metric="valence")["estimate"] == 0.5


def test_rows_on_different_clips_are_refused(rng):
    a = row(rng.random(8) < 0.5, songs=4, clips_per_song=2)
    b = row(rng.random(6) < 0.5, songs=3, clips_per_song=2)
    with pytest.raises(ValueError, match="different clips"):
        song_bootstrap([a], minus=[b])
