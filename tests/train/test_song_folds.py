"""EMOPIA's train + val cut into song-grouped folds (mer.train.song_folds), on the real clip lists."""
from __future__ import annotations

import pytest

from mer.train.emopia import load_split, song_folds


@pytest.fixture(scope="module")
def clips(emopia):
    return [*load_split(emopia, "train"), *load_split(emopia, "val")]


@pytest.mark.parametrize("folds", [3, 5, 10])
def test_folds_partition_the_clips_and_never_split_a_song(clips, folds):
    parts = song_folds(clips, folds)
    assert len(parts) == folds
    names = [c.name for part in parts for c in part]
    assert sorted(names) == sorted(c.name for c in clips)  # every clip once
    songs = [{c.song for c in part} for part in parts]
    for i in range(folds):
        for j in range(i + 1, folds):
            assert not songs[i] & songs[j], f"a song in folds {i} and {j}"


def test_every_fold_holds_every_quadrant_in_about_the_overall_share(clips):
    parts = song_folds(clips, 5)
    overall = [sum(c.quadrant == q for c in clips) / len(clips) for q in range(4)]
    for part in parts:
        share = [sum(c.quadrant == q for c in part) / len(part) for q in range(4)]
        assert all(abs(s - o) < 0.08 for s, o in zip(share, overall)), (share, overall)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 0.2 * len(clips) / 5


def test_folds_depend_on_the_seed_only(clips):
    names = lambda parts: [[c.name for c in p] for p in parts]  # noqa: E731
    assert names(song_folds(clips, 5, seed=3)) == names(song_folds(list(clips), 5, seed=3))
    assert names(song_folds(clips, 5, seed=3)) != names(song_folds(clips, 5, seed=4))


def test_more_folds_than_songs_is_refused(clips):
    few = [c for c in clips if c.song in sorted({c.song for c in clips})[:3]]
    with pytest.raises(ValueError, match="folds"):
        song_folds(few, 4)
