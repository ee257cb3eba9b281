"""Transposition moves every input of a piece by the same k semitones and nothing else."""
from __future__ import annotations

import io

import numpy as np
import pretty_midi
import pytest

from mer.config import FeatureConfig
from mer.errors import BadInputError
from mer.features.spectral import chromagram
from mer.features.summary import PITCH_INDICES, summary_descriptors
from mer.features.midi import piano_notes, read_midi
from mer.features.render import render_audio
from mer.features.tokens import midi_like_tokens, notes_from_tokens
from mer.features.transpose import (
    allowed_shifts, roll_chroma, transpose_midi, transpose_summary, transpose_tokens,
)

CONFIG = FeatureConfig()


@pytest.fixture(scope="module")
def clip_bytes(emopia) -> bytes:
    return sorted((emopia / "midis").glob("Q4_*.mid"))[0].read_bytes()


@pytest.fixture(scope="module")
def clip_notes(clip_bytes) -> np.ndarray:
    return piano_notes(read_midi(clip_bytes, name="clip"), config=CONFIG)


@pytest.mark.parametrize("k", [-6, -1, 4])
def test_a_transposed_midi_file_holds_every_note_moved_by_k_and_its_tokens_are_the_shifted_tokens(clip_bytes,
                                                                                                 clip_notes, k):
    moved = piano_notes(read_midi(transpose_midi(clip_bytes, k, name="clip"), name="moved"), config=CONFIG)
    np.testing.assert_array_equal(moved[:, 2], clip_notes[:, 2] + k)
    np.testing.assert_allclose(moved[:, [0, 1, 3]], clip_notes[:, [0, 1, 3]], atol=1e-6)  # pedal, times, velocity
    # What training relies on: shifting the tokens (the cheap form) gives the tokens of the re-rendered MIDI.
    np.testing.assert_array_equal(midi_like_tokens(moved, config=CONFIG),
                                  transpose_tokens(midi_like_tokens(clip_notes, config=CONFIG), k))


def test_transposing_a_midi_file_leaves_drums_and_drops_what_leaves_the_keyboard() -> None:
    midi = pretty_midi.PrettyMIDI()
    piano, drums = pretty_midi.Instrument(program=0), pretty_midi.Instrument(program=0, is_drum=True)
    piano.notes = [pretty_midi.Note(velocity=80, pitch=p, start=s, end=s + 0.5)
                   for p, s in ((60, 0.0), (126, 1.0), (64, 2.0))]
    drums.notes = [pretty_midi.Note(velocity=90, pitch=38, start=0.5, end=0.6)]
    midi.instruments += [piano, drums]
    buffer = io.BytesIO()
    midi.write(buffer)
    moved = read_midi(transpose_midi(buffer.getvalue(), 3, name="two-parts"), name="moved")
    by_kind = {i.is_drum: [(n.pitch, round(n.start, 3), round(n.end, 3)) for n in i.notes] for i in moved.instruments}
    assert by_kind[False] == [(63, 0.0, 0.5), (67, 2.0, 2.5)]  # 126 + 3 has no key; the later note keeps its time
    assert by_kind[True] == [(38, 0.5, 0.6)]


def test_bytes_that_are_not_midi_are_refused_naming_the_item() -> None:
    with pytest.raises(BadInputError, match="not-midi.mid"):
        transpose_midi(b"RIFF\x00\x00 not a MIDI file", 2, name="not-midi.mid")


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
        moving = list(PITCH_INDICES)  # the mean pitch and the register of the bass and the top line
        assert (expected[moving] != summary_descriptors(notes=notes, chroma=None)[moving]).all()
