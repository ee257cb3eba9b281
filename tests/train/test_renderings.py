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
from mer.features.transpose import RENDERED_KEYS, rendered_shifts, transpose_batch
from mer.train.renderings import extract_renderings, pick_renderings, rendering_table, transposition_table

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


def one_note_table(n: int) -> dict[str, np.ndarray]:
    """n one-window clips, each a single C4 (chroma: pitch class C only; MFCCs all 1)."""
    chroma = np.zeros((n, 12, FRAMES), np.float32)
    chroma[:, 0] = 1.0
    return {"name": np.array([f"c{i}" for i in range(n)]), "window_index": np.zeros(n, np.int64),
            "tokens": np.tile(np.array([60, 128 + 60]), (n, 1)), "token_lengths": np.full(n, 2),
            "chroma": chroma, "mfcc": np.ones((n, 23, FRAMES), np.float32),
            "summary": np.zeros((n, SUMMARY_SIZE), np.float32), "present": np.ones((n, 3), bool),
            "quadrant": np.arange(n) % 4}


def test_a_window_takes_its_rendering_before_its_key_moves() -> None:
    # The drawn rendering's chroma is the one transposition rolls: the chroma's tonic follows the tokens' shift,
    # and the MFCCs come from the same rendering as the chroma.
    n = 64
    table = one_note_table(n)  # every window: pitch class C only, MFCCs all 1
    chroma, mfcc = table["chroma"], table["mfcc"]
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


def moved_renderings(table: dict[str, np.ndarray], limit: int, *, missing: str = "") -> dict[int, list]:
    """Each clip 'rendered' moved by k: its chroma's energy on pitch class k, its MFCCs all 10 + k; the clip
    named ``missing`` failed in every rendering."""
    out = {}
    for k in rendered_shifts(limit):
        chroma = np.roll(table["chroma"], k, axis=1) * 0.5  # another rendering: not exactly the rolled primary
        out[k] = [SimpleNamespace(clip=SimpleNamespace(name=str(name)), features=SimpleNamespace(
            num_windows=1, chroma=chroma[i:i + 1], mfcc=np.full((1, 23, FRAMES), 10.0 + k, np.float32)))
            for i, name in enumerate(table["name"]) if name != missing]
    return out


def test_a_transposed_window_takes_chroma_and_mfccs_from_the_rendering_of_the_k_its_tokens_moved_by() -> None:
    n, limit = 64, 3
    table = transposition_table(one_note_table(n), moved_renderings(one_note_table(n), limit), limit=limit)
    assert table["transposed_chroma"].shape == (n, 2 * limit, 12, FRAMES)
    seen = set()
    for step in range(3):
        batch = transpose_batch(table, limit=limit, rng=np.random.default_rng(step))
        assert not any(key in batch for key in RENDERED_KEYS)
        shifts = batch["tokens"][:, 0] - 60
        for i, k in enumerate(shifts):
            assert batch["chroma"][i, :, 0].argmax() == k % 12
            if k:  # the rendering of the moved MIDI: its MFCCs and its chroma, not the primary's
                assert batch["mfcc"][i, 0, 0] == 10 + k and batch["chroma"][i].max() == 0.5
            else:
                assert batch["mfcc"][i, 0, 0] == 1 and batch["chroma"][i].max() == 1.0
        np.testing.assert_array_equal(batch["quadrant"], table["quadrant"])  # labels stay
        seen |= set(shifts.tolist())
    assert seen == set(range(-limit, limit + 1))
    # The same draws as the rolled form: only the audio features differ.
    rolled = transpose_batch(one_note_table(n), limit=limit, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(rolled["tokens"], transpose_batch(table, limit=limit,
                                                                    rng=np.random.default_rng(0))["tokens"])


def test_a_window_missing_from_a_transposed_rendering_falls_back_to_the_rolled_form() -> None:
    n, limit = 4, 2
    table = transposition_table(one_note_table(n), moved_renderings(one_note_table(n), limit, missing="c2"),
                                limit=limit)
    for slot, k in enumerate((-2, -1, 1, 2)):
        assert table["transposed_chroma"][2, slot, :, 0].argmax() == k % 12  # rolled primary
        assert table["transposed_chroma"][2, slot].max() == 1.0 and (table["transposed_mfcc"][2, slot] == 1).all()
        assert (table["transposed_mfcc"][1, slot] == 10 + k).all()  # the others keep their renderings
    with pytest.raises(ValueError, match="every k"):
        transposition_table(one_note_table(n), {1: [], -1: []}, limit=limit)


def test_rendered_transposition_cannot_be_combined_with_other_soundfonts_and_unknown_forms_are_refused() -> None:
    with pytest.raises(ValueError, match="extra_soundfonts"):
        TrainConfig(transpose_semitones=6, transpose_audio="rendered", extra_soundfonts=("second.sf2",))
    with pytest.raises(ValueError, match="transpose_audio"):
        TrainConfig(transpose_semitones=6, transpose_audio="resampled")
