"""Key finding names the key of known material, and moves with a transposed piece."""
from __future__ import annotations

import numpy as np
import pytest

from mer.config import FeatureConfig
from mer.features.key import (
    PITCH_CLASS_NAMES, chroma_histogram, estimate_key, key_descriptor, pitch_class_histogram,
)
from mer.features.summary import SUMMARY_SIZE, summary_descriptors
from mer.features.midi import piano_notes, read_midi

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)
MAJOR_CADENCE = ((0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7))  # I IV V I
MINOR_CADENCE = ((0, 3, 7), (5, 8, 12), (7, 11, 14), (0, 3, 7))  # i iv V i


def notes_of(tonic: int, scale, cadence) -> np.ndarray:
    """A scale up from ``tonic`` (quarter notes) followed by a cadence (half-note chords): (N, 4) notes."""
    rows, t = [], 0.0
    for degree in (*scale, 12):
        rows.append((t, t + 0.5, 60 + tonic + degree, 80))
        t += 0.5
    for chord in cadence:
        rows.extend((t, t + 1.0, 48 + tonic + p, 70) for p in chord)
        t += 1.0
    rows.append((t, t + 2.0, 36 + tonic, 70))  # the tonic in the bass to close
    return np.array(rows, dtype=np.float64)


@pytest.mark.parametrize("tonic", range(12))
@pytest.mark.parametrize("mode,scale,cadence", [("major", MAJOR_SCALE, MAJOR_CADENCE),
                                                ("minor", HARMONIC_MINOR_SCALE, MINOR_CADENCE)])
def test_scales_and_cadences_are_found_in_their_key(tonic, mode, scale, cadence):
    key = estimate_key(pitch_class_histogram(notes_of(tonic, scale, cadence)))
    assert (key.tonic, key.mode) == (tonic, mode), f"{PITCH_CLASS_NAMES[tonic]} {mode} read as {key.name}"
    assert key.confidence > 0


def test_an_emopia_clip_keeps_its_mode_and_its_key_moves_with_each_transposition(emopia):
    data = (emopia / "midis" / "Q3_0vLPYiPN7qY_1.mid").read_bytes() if (emopia / "midis" / "Q3_0vLPYiPN7qY_1.mid").exists() \
        else sorted((emopia / "midis").glob("Q3_*.mid"))[0].read_bytes()
    notes = piano_notes(read_midi(data, name="clip"), config=FeatureConfig())
    original = estimate_key(pitch_class_histogram(notes))
    for k in (-5, -1, 1, 2, 7):
        moved = notes.copy()
        moved[:, 2] += k
        key = estimate_key(pitch_class_histogram(moved))
        assert key.mode == original.mode
        assert key.tonic == (original.tonic + k) % 12
        assert key.confidence == pytest.approx(original.confidence)


def test_key_descriptors_do_not_change_under_transposition(rng):
    histogram = rng.random(12)
    histogram /= histogram.sum()
    for k in range(12):
        np.testing.assert_allclose(key_descriptor(np.roll(histogram, k)), key_descriptor(histogram), atol=1e-12)


def test_a_chromagram_of_a_c_major_chord_reads_as_c_major():
    chroma = np.zeros((12, 50), dtype=np.float32)
    chroma[[0, 4, 7], :] = 1.0
    chroma[:, 40:] = 0.0  # padding frames do not count
    histogram = chroma_histogram(chroma)
    assert histogram.sum() == pytest.approx(1.0)
    key = estimate_key(histogram)
    assert key.name == "C major"


def test_flat_or_empty_material_has_no_key_confidence():
    assert estimate_key(np.full(12, 1 / 12)).confidence == 0.0
    assert estimate_key(pitch_class_histogram(np.zeros((0, 4)))).confidence == 0.0
    summary = summary_descriptors(notes=None, chroma=None)
    assert summary.shape == (SUMMARY_SIZE,) and not summary.any()
