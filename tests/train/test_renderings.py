"""Training on several piano timbres (mer/train/renderings.py): each window's audio features from one rendering."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from mer.config import SUMMARY_SIZE, MerConfig, TrainConfig
from mer.errors import ConfigError
from mer.features import FeatureCache
from mer.train.loop import training_batch
from mer.train.renderings import extract_renderings, pick_renderings, rendering_table

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


def test_a_window_takes_its_rendering_before_its_key_moves() -> None:
    # The drawn rendering's chroma is the one transposition rolls: the chroma's tonic follows the tokens' shift,
    # and the MFCCs come from the same rendering as the chroma.
    n = 64
    chroma = np.zeros((n, 12, FRAMES), np.float32)
    chroma[:, 0] = 1.0  # every window: pitch class C only
    mfcc = np.ones((n, 23, FRAMES), np.float32)
    table = {"name": np.array([f"c{i}" for i in range(n)]), "window_index": np.zeros(n, np.int64),
             "tokens": np.tile(np.array([60, 128 + 60]), (n, 1)), "token_lengths": np.full(n, 2),
             "chroma": chroma, "mfcc": mfcc, "summary": np.zeros((n, SUMMARY_SIZE), np.float32),
             "present": np.ones((n, 3), bool), "quadrant": np.arange(n) % 4}
    other = [SimpleNamespace(clip=SimpleNamespace(name=f"c{i}"), features=SimpleNamespace(
        num_windows=1, chroma=2 * chroma[i:i + 1], mfcc=2 * mfcc[i:i + 1])) for i in range(n)]
    table = rendering_table(table, [other])
    training = TrainConfig(transpose_semitones=6, extra_soundfonts=("second.sf2",))
    batch = training_batch(table, np.arange(n), training=training, epoch=0, step=1, rank=0)
    shifts = batch["tokens"][:, 0] - 60
    assert len(set(shifts.tolist())) > 3 and set(batch["mfcc"][:, 0, 0].tolist()) == {1.0, 2.0}
    for i in range(n):
        assert batch["chroma"][i, :, 0].argmax() == shifts[i] % 12  # rolled with the tokens
        assert batch["chroma"][i].max() == batch["mfcc"][i, 0, 0]  # chroma and MFCCs of one rendering


def test_a_soundfont_that_does_not_load_stops_training_before_any_extraction(tmp_path) -> None:
    not_a_soundfont = tmp_path / "notes.sf2"
    not_a_soundfont.write_bytes(b"RIFF\x00\x00\x00\x00 this is not a SoundFont")
    for soundfont, message in ((tmp_path / "missing.sf2", "not found"), (not_a_soundfont, "cannot load")):
        config = dataclasses.replace(MerConfig(), training=TrainConfig(extra_soundfonts=(str(soundfont),)))
        with pytest.raises(ConfigError, match=message):
            extract_renderings([], config=config, cache=FeatureCache(tmp_path / "cache"))  # no Ray needed
