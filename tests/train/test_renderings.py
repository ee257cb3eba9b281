"""Training on several piano timbres (mer/train/renderings.py): each window's audio features from one rendering."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mer.train.renderings import pick_renderings, rendering_table

FRAMES = 7


def clip(name: str, windows: int, value: float) -> SimpleNamespace:
    """An extracted clip whose every chroma/MFCC frame holds ``value`` (as much as rendering_table reads of one)."""
    return SimpleNamespace(clip=SimpleNamespace(name=name), features=SimpleNamespace(
        num_windows=windows, chroma=np.full((windows, 12, FRAMES), value, np.float32),
        mfcc=np.full((windows, 23, FRAMES), value, np.float32)))


def table_of(clips: list[SimpleNamespace]) -> dict[str, np.ndarray]:
    counts = [c.features.num_windows for c in clips]
    return {"name": np.array([c.clip.name for c, n in zip(clips, counts) for _ in range(n)]),
            "window_index": np.concatenate([np.arange(n) for n in counts]),
            "chroma": np.concatenate([c.features.chroma for c in clips]),
            "mfcc": np.concatenate([c.features.mfcc for c in clips]),
            "tokens": np.arange(sum(counts))[:, None].repeat(5, axis=1),
            "quadrant": np.arange(sum(counts)) % 4}


def test_renderings_align_by_clip_and_window_and_missing_ones_keep_the_primary() -> None:
    primary = [clip("a", 2, 0.0), clip("b", 3, 0.0), clip("c", 1, 0.0)]
    second = [clip("c", 1, 2.0), clip("b", 2, 2.0), clip("a", 2, 2.0)]  # other order; b has one window fewer
    third = [clip("b", 3, 3.0)]  # a and c failed with this SoundFont
    table = rendering_table(table_of(primary), [second, third])
    for key in ("chroma", "mfcc"):
        frames = table[f"renderings_{key}"]  # (N, 2, rows, F)
        assert frames.shape[:2] == (6, 2)
        by_window = {(n, int(w)): frames[i, :, 0, 0].tolist()
                     for i, (n, w) in enumerate(zip(table["name"], table["window_index"]))}
        assert by_window == {("a", 0): [2, 0], ("a", 1): [2, 0], ("b", 0): [2, 3], ("b", 1): [2, 3],
                             ("b", 2): [0, 3], ("c", 0): [2, 0]}
        np.testing.assert_array_equal(table[key], table_of(primary)[key])  # the primary is untouched


def test_each_window_takes_both_audio_features_from_one_rendering_and_nothing_else_changes() -> None:
    primary = [clip(f"c{i}", 2, 0.0) for i in range(20)]
    others = [[clip(f"c{i}", 2, float(k)) for i in range(20)] for k in (1, 2)]
    table = rendering_table(table_of(primary), others)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = pick_renderings(table, rng=rng)
        assert not any(k.startswith("renderings_") for k in batch)
        chosen = batch["chroma"][:, 0, 0]
        np.testing.assert_array_equal(batch["mfcc"][:, 0, 0], chosen)  # the same rendering for both
        assert all((batch[k][i] == chosen[i]).all() for k in ("chroma", "mfcc") for i in range(len(chosen)))
        for key in ("name", "window_index", "tokens", "quadrant"):
            np.testing.assert_array_equal(batch[key], table[key])
        seen |= set(chosen.tolist())
    assert seen == {0.0, 1.0, 2.0}  # every rendering is drawn (40 windows x 5 draws)
    plain = table_of(primary)
    assert pick_renderings(plain, rng=rng).keys() == plain.keys()  # one SoundFont: nothing to pick
