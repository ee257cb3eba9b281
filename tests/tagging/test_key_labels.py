"""Every label carries its piece's key: the tagger reads it from the window rows' pitch classes."""
from __future__ import annotations

import numpy as np

from mer.config import FeatureConfig
from mer.features import PITCH_CLASS_NAMES, estimate_key, extract_features, piano_notes, read_midi
from mer.tagging.recorder import piece_key


def test_a_midi_items_label_names_the_key_of_its_notes_and_it_moves_with_a_transposition(emopia):
    config = FeatureConfig()
    path = sorted((emopia / "midis").glob("Q3_*.mid"))[0]
    midi = read_midi(path.read_bytes(), name=path.stem)
    item = extract_features(name=path.stem, midi=midi, audio=None, config=config)
    fields = piece_key(item.window_rows()[0])
    expected = estimate_key(item.pitch_classes)
    assert (fields["musical_key"], fields["mode"]) == (PITCH_CLASS_NAMES[expected.tonic], expected.mode)
    assert fields["key_confidence"] > 0
    for instrument in midi.instruments:  # the same piece a major third higher
        for note in instrument.notes:
            note.pitch += 4
    moved = piece_key(extract_features(name=path.stem, midi=midi, audio=None, config=config).window_rows()[0])
    assert moved["mode"] == fields["mode"]
    assert PITCH_CLASS_NAMES.index(moved["musical_key"]) == (expected.tonic + 4) % 12
    assert np.isclose(moved["key_confidence"], fields["key_confidence"])


def test_an_item_without_pitch_classes_has_no_key():
    assert piece_key({"pitch_classes": np.zeros(12)}) == {"musical_key": None, "mode": None, "key_confidence": None}
