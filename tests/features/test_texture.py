"""Texture descriptors say what a pitch-class histogram cannot: what sounds together, where the melody goes, how
the mode and the dynamics move within a window."""
from __future__ import annotations

import numpy as np
import pytest

from mer.config import SUMMARY_KEY_SIZE, FeatureConfig
from mer.features import SUMMARY_NAMES, piano_notes, read_midi, summary_descriptors
from mer.features.texture import REGISTER_NAMES, TEXTURE_NAMES, texture_descriptors

INDEX = {name: i for i, name in enumerate(TEXTURE_NAMES)}


def chords(pitch_sets, *, seconds=1.0, velocity=70, start=0.0) -> np.ndarray:
    """Block chords one after another, each held ``seconds``: (N, 4) notes."""
    rows = []
    for i, pitches in enumerate(pitch_sets):
        t = start + i * seconds
        rows.extend((t, t + seconds, p, velocity) for p in pitches)
    return np.array(rows, dtype=np.float64)


def line(pitches, *, step=0.25, length=0.2, velocities=None) -> np.ndarray:
    """A single melodic line, one note every ``step`` seconds, each ``length`` long."""
    velocities = [70] * len(pitches) if velocities is None else velocities
    return np.array([(i * step, i * step + length, p, v) for i, (p, v) in enumerate(zip(pitches, velocities))],
                    dtype=np.float64)


def texture(notes) -> dict[str, float]:
    return dict(zip(TEXTURE_NAMES, texture_descriptors(notes)))


def test_the_summary_is_key_and_note_statistics_then_texture():
    assert SUMMARY_NAMES[SUMMARY_KEY_SIZE:] == TEXTURE_NAMES
    notes = chords([(60, 64, 67), (65, 69, 72)])
    summary = summary_descriptors(notes=notes, chroma=None)
    np.testing.assert_allclose(summary[SUMMARY_KEY_SIZE:], texture_descriptors(notes), atol=1e-6)


def test_no_notes_is_all_zeros_and_the_chromagram_gives_no_texture():
    assert not texture_descriptors(np.zeros((0, 4))).any()
    clicks = line([60, 64, 67, 72], length=0.002)  # hostile MIDI: every note over before anything sounds together
    assert np.isfinite(texture_descriptors(clicks)).all()
    chroma = np.zeros((12, 40), dtype=np.float32)
    chroma[[0, 4, 7]] = 1.0
    assert not summary_descriptors(notes=None, chroma=chroma)[SUMMARY_KEY_SIZE:].any()


def test_intervals_sounding_together_tell_a_cluster_from_a_triad():
    triad = texture(chords([(60, 64, 67)] * 4))
    cluster = texture(chords([(60, 61, 62)] * 4))
    shares = np.array([triad[f"interval_class_{i}"] for i in range(12)])
    assert shares.sum() == pytest.approx(1.0)
    assert {i for i in range(12) if shares[i] > 0} == {3, 4, 7}  # C-E, E-G, C-G
    assert cluster["interval_class_1"] + cluster["interval_class_2"] == pytest.approx(1.0)
    assert triad["polyphony"] == pytest.approx(3 / 4)
    melody = texture(line([60, 62, 64, 65]))
    assert not any(melody[f"interval_class_{i}"] for i in range(12))  # one note at a time: nothing sounds together


def test_a_rising_line_rises_and_a_falling_line_falls():
    rising = texture(line([60, 62, 64, 65, 67, 69, 71, 72]))
    falling = texture(line([72, 71, 69, 67, 65, 64, 62, 60]))
    assert (rising["melody_up"], rising["melody_down"]) == (1.0, 0.0)
    assert (falling["melody_up"], falling["melody_down"]) == (0.0, 1.0)
    assert rising["melody_leap"] == 0.0
    assert texture(line([60, 72, 60, 72]))["melody_leap"] == 1.0
    assert texture(line([60, 72, 60, 72]))["melody_step"] == pytest.approx(1.0)  # an octave a step


def test_the_mode_is_read_segment_by_segment():
    major = chords([(60, 64, 67), (60, 64, 67), (65, 69, 72), (60, 64, 67)] * 3)  # I I IV I in C
    minor = chords([(57, 60, 64), (57, 60, 64), (62, 65, 69), (57, 60, 64)] * 3)  # i i iv i in A minor
    assert texture(major)["local_minor"] == 0.0 and texture(major)["local_mode_mean"] > 0
    assert texture(minor)["local_minor"] == 1.0 and texture(minor)["local_mode_mean"] < 0
    both = np.concatenate([major, minor + np.array([12.0, 12.0, 0, 0])])  # 12 s of C major, then 12 s of A minor
    assert 0.0 < texture(both)["local_minor"] < 1.0
    assert texture(both)["local_mode_std"] > max(texture(major)["local_mode_std"], texture(minor)["local_mode_std"])


def test_dynamics_articulation_and_density():
    pitches = [60, 62, 64, 65, 67, 69, 71, 72] * 2
    louder = texture(line(pitches, velocities=np.linspace(30, 110, len(pitches))))
    softer = texture(line(pitches, velocities=np.linspace(110, 30, len(pitches))))
    assert louder["velocity_trend"] > 0 > softer["velocity_trend"]
    legato, staccato = texture(line(pitches, length=0.25)), texture(line(pitches, length=0.05))
    assert legato["legato"] > staccato["legato"]
    assert texture(line(pitches, step=0.125))["onset_density"] > texture(line(pitches, step=0.5))["onset_density"]
    steady = texture(line(pitches))
    rubato = texture(np.array([(t, t + 0.2, 60, 70) for t in np.cumsum([0.1, 0.5, 0.2, 0.9, 0.15, 0.6])]))
    assert steady["ioi_variation"] == pytest.approx(0.0, abs=1e-9) and rubato["ioi_variation"] > 0.3


def test_only_the_register_moves_with_a_transposition_of_an_emopia_clip(emopia):
    path = sorted((emopia / "midis").glob("Q4_*.mid"))[0]
    notes = piano_notes(read_midi(path.read_bytes(), name=path.name), config=FeatureConfig())
    notes = notes[notes[:, 0] < 30.0]
    original = texture(notes)
    for k in (-5, 3):
        moved = notes.copy()
        moved[:, 2] += k
        shifted = texture(moved)
        for name in TEXTURE_NAMES:
            expected = original[name] + (k / 12 if name in REGISTER_NAMES else 0.0)
            assert shifted[name] == pytest.approx(expected, abs=1e-9), name
