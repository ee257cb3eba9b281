"""Notes read back from MIDI-like tokens inside the model (mer/model/notes.py) agree with the decoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mer.config import FeatureConfig
from mer.features import midi_like_tokens, notes_from_tokens, pad_id
from mer.features.tokens import velocity_bin
from mer.model.notes import MAX_INTERVAL, PITCHES, TIME_BUCKETS, note_steps, time_bucket

CONFIG = FeatureConfig()


def random_notes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Notes with chords, re-struck and overlapping keys of one pitch, long gaps and zero-length notes."""
    start = np.sort(rng.choice(np.arange(0, 12, 0.05), count)) + rng.uniform(0, 0.004, count)
    length = rng.choice([0.0, 0.03, 0.2, 0.8, 3.0], count)
    pitch = rng.integers(58, 66, count)  # a narrow range: the same pitch overlaps itself often
    velocity = rng.integers(1, 128, count)
    return np.column_stack([start, start + length, pitch, velocity]).astype(np.float64)


def decoded_rows(tokens: np.ndarray) -> np.ndarray:
    """(onset step, duration steps, pitch, velocity bin) of the decoder's notes, sorted."""
    notes = notes_from_tokens(tokens, config=CONFIG)
    steps = np.rint(notes[:, :2] * 1000 / CONFIG.time_shift_ms).astype(np.int64)
    rows = np.column_stack([steps[:, 0], steps[:, 1] - steps[:, 0], notes[:, 2].astype(np.int64),
                            velocity_bin(notes[:, 3], config=CONFIG)])
    return rows[np.lexsort(rows.T[::-1])]


def model_rows(steps, item: int) -> np.ndarray:
    """The same four columns from :func:`note_steps`' output for one window, sorted."""
    real = steps.pitch[item] < PITCHES
    rows = torch.stack([steps.onset[item], steps.duration[item], steps.pitch[item], steps.velocity[item]], 1)[real]
    rows = rows.numpy()
    return rows[np.lexsort(rows.T[::-1])]


def padded(sequences: list[np.ndarray], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """PAD-padded (N, L) tokens and their lengths, with ``extra`` more PAD columns."""
    length = max(len(s) for s in sequences) + extra
    tokens = np.full((len(sequences), length), pad_id(CONFIG), dtype=np.int64)
    for row, sequence in zip(tokens, sequences):
        row[: len(sequence)] = sequence
    return torch.from_numpy(tokens), torch.tensor([len(s) for s in sequences])


@pytest.mark.parametrize("seed", range(6))
def test_notes_match_the_decoder_whole_and_cut_anywhere(seed):
    rng = np.random.default_rng(seed)
    whole = midi_like_tokens(random_notes(rng, 60), config=CONFIG)
    # Cut windows lose note-offs (the feature cap keeps a window's first tokens): the decoder ends those notes
    # at the final time, and so must the model.
    cuts = [whole] + [whole[: int(c)] for c in rng.integers(1, len(whole), 4)]
    tokens, lengths = padded(cuts, extra=7)
    steps = note_steps(tokens, lengths, config=CONFIG)
    for item, sequence in enumerate(cuts):
        expected = decoded_rows(sequence)
        np.testing.assert_array_equal(model_rows(steps, item), expected)
        assert int(steps.counts[item]) == max(len(expected), 1)


def test_notes_come_in_onset_order_with_gaps_from_the_previous_onset():
    notes = np.array([[0.5, 1.0, 60, 80], [0.5, 0.7, 64, 80], [2.0, 2.5, 67, 40], [0.0, 4.0, 48, 100]])
    tokens, lengths = padded([midi_like_tokens(notes, config=CONFIG)])
    steps = note_steps(tokens, lengths, config=CONFIG)
    onsets = steps.onset[0].tolist()
    assert onsets == sorted(onsets) == [0, 50, 50, 200]
    assert steps.onset_gaps()[0].tolist() == [0, 50, 0, 150]
    assert steps.duration[0].tolist()[0] == 400  # the bass note held under the others


def test_transposed_tokens_move_only_the_pitches():
    rng = np.random.default_rng(7)
    notes = random_notes(rng, 40)
    moved = notes.copy()
    moved[:, 2] += 5
    tokens, lengths = padded([midi_like_tokens(notes, config=CONFIG), midi_like_tokens(moved, config=CONFIG)])
    steps = note_steps(tokens, lengths, config=CONFIG)
    assert torch.equal(steps.pitch[1], steps.pitch[0] + 5)
    for field in ("velocity", "onset", "duration"):
        assert torch.equal(getattr(steps, field)[0], getattr(steps, field)[1]), field
    assert torch.equal(steps.intervals()[0], steps.intervals()[1])  # intervals do not know the key


def test_intervals_are_the_steps_between_consecutive_notes_capped_at_two_octaves():
    notes = np.array([[0.0, 0.5, 60, 80], [0.5, 1.0, 64, 80], [1.0, 1.5, 62, 80], [1.5, 2.0, 100, 80]])
    tokens, lengths = padded([midi_like_tokens(notes, config=CONFIG)])
    intervals = note_steps(tokens, lengths, config=CONFIG).intervals()[0] - MAX_INTERVAL
    assert intervals.tolist() == [MAX_INTERVAL + 1, 4, -2, MAX_INTERVAL]  # the first note has none


def test_a_note_before_any_velocity_token_has_the_decoders_default_velocity():
    on_shift_off = np.array([60, 256 + 9, 128 + 60])  # a window cut from a longer sequence may start so
    tokens, lengths = padded([on_shift_off])
    np.testing.assert_array_equal(model_rows(note_steps(tokens, lengths, config=CONFIG), 0),
                                  decoded_rows(on_shift_off))


def test_windows_without_notes_are_one_padding_step():
    only_offs_and_shifts = np.array([128 + 60, 256 + 10, 256 + CONFIG.max_shift_steps + 3])
    tokens, lengths = padded([only_offs_and_shifts, np.zeros(0, np.int64)], extra=2)
    steps = note_steps(tokens, lengths, config=CONFIG)
    assert steps.counts.tolist() == [1, 1]
    assert (steps.pitch == PITCHES).all()


def test_time_buckets_grow_with_time_and_stay_in_range():
    buckets = time_bucket(torch.arange(0, 100_000, 7))
    assert buckets[0] == 0 and buckets.max() == TIME_BUCKETS - 1
    assert (buckets.diff() >= 0).all()
    assert time_bucket(torch.tensor([1, 2, 4, 8])).unique().numel() == 4  # short gaps stay distinct
