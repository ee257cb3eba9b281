"""Transposition moves every input of a piece by the same k semitones and nothing else."""
from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from mer.config import FeatureConfig
from mer.features.spectral import chromagram
from mer.features.key import PITCH_MEAN_INDEX, summary_descriptors
from mer.features.midi import piano_notes, read_midi
from mer.features.render import render_audio
from mer.features.tokens import midi_like_tokens, notes_from_tokens
from mer.features.transpose import allowed_shifts, roll_chroma, transpose_summary, transpose_tokens

CONFIG = FeatureConfig()


@pytest.fixture(scope="module")
def clip_notes(emopia) -> np.ndarray:
    path = sorted((emopia / "midis").glob("Q4_*.mid"))[0]
    return piano_notes(read_midi(path.read_bytes(), name=path.stem), config=CONFIG)


@pytest.mark.parametrize("k", [-7, -1, 3, 5])
def test_shifted_tokens_decode_to_every_pitch_moved_by_k(clip_notes, k):
    tokens = midi_like_tokens(clip_notes[:200], config=CONFIG)
    original = notes_from_tokens(tokens, config=CONFIG)
    moved = notes_from_tokens(transpose_tokens(tokens, k), config=CONFIG)
    np.testing.assert_array_equal(moved[:, 2], original[:, 2] + k)
    np.testing.assert_array_equal(moved[:, [0, 1, 3]], original[:, [0, 1, 3]])  # times and velocities kept


def test_a_shift_past_the_keyboard_is_refused_and_allowed_shifts_stay_inside(clip_notes):
    tokens = midi_like_tokens(clip_notes[:200], config=CONFIG)
    low, high = allowed_shifts(tokens, 200)
    transpose_tokens(tokens, low)
    transpose_tokens(tokens, high)
    with pytest.raises(ValueError):
        transpose_tokens(tokens, high + 1)
    with pytest.raises(ValueError):
        transpose_tokens(tokens, low - 1)


def _midi_of(notes: np.ndarray) -> pretty_midi.PrettyMIDI:
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(velocity=int(v), pitch=int(p), start=float(s), end=float(e))
                   for s, e, p, v in notes]
    midi.instruments.append(piano)
    return midi


@pytest.mark.parametrize("k", [2, -3])
def test_the_rolled_chromagram_matches_the_chromagram_of_the_transposed_rendering(clip_notes, k):
    notes = clip_notes[clip_notes[:, 0] < 10.0]
    moved = notes.copy()
    moved[:, 2] += k
    rolled = roll_chroma(chromagram(render_audio(_midi_of(notes), config=CONFIG, name="a"), config=CONFIG), k)
    direct = chromagram(render_audio(_midi_of(moved), config=CONFIG, name="b"), config=CONFIG)
    frames = min(rolled.shape[1], direct.shape[1])
    rolled, direct = rolled[:, :frames], direct[:, :frames]
    # Stated tolerance: the SoundFont's samples differ from key to key and the chroma filters are not exactly
    # shift-invariant, so frame by frame the two agree well (correlation > 0.75; measured 0.79-0.89 on this clip)
    # and their average pitch-class profiles almost exactly (> 0.9; measured 0.95-0.98) ...
    correlation = np.corrcoef(rolled.ravel(), direct.ravel())[0, 1]
    assert correlation > 0.75
    assert np.corrcoef(rolled.mean(axis=1), direct.mean(axis=1))[0, 1] > 0.9
    # ... while rolling by a wrong amount agrees far less: the test tells the right transposition from others.
    wrong = roll_chroma(rolled, 1)
    assert np.corrcoef(wrong.ravel(), direct.ravel())[0, 1] < correlation - 0.3


def test_summary_of_transposed_notes_equals_transposed_summary(clip_notes):
    notes = clip_notes[clip_notes[:, 0] < 30.0]
    for k in (-4, 1, 6):
        moved = notes.copy()
        moved[:, 2] += k
        expected = summary_descriptors(notes=moved, chroma=None)
        np.testing.assert_allclose(transpose_summary(summary_descriptors(notes=notes, chroma=None), k), expected,
                                   atol=1e-5)
        assert expected[PITCH_MEAN_INDEX] != summary_descriptors(notes=notes, chroma=None)[PITCH_MEAN_INDEX]
