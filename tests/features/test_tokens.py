"""mer.features.tokens: MIDI-like tokens (Oore et al. 2018) round-trip real EMOPIA clips within half a time step."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mer.config import FeatureConfig
from mer.features.midi import piano_notes, read_midi
from mer.features.tokens import (NOTE_OFF, NOTE_ON, TIME_SHIFT, bin_velocity, midi_like_tokens, notes_from_tokens,
                                 pad_id, quantise_times, velocity_bin, velocity_offset)
from mer.train.emopia import load_split

CONFIG = FeatureConfig()
VEL = velocity_offset(CONFIG)  # 356 with the default 100 time shifts


def shift(steps: int) -> int:
    return TIME_SHIFT + steps - 1


def real_notes(emopia: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """Pedalled piano notes of ``count`` training clips spread over the split (all four quadrants)."""
    clips = load_split(emopia, "train")
    picked = clips[:: len(clips) // count][:count]
    assert {clip.quadrant for clip in picked} == {0, 1, 2, 3}
    return [(c.name, piano_notes(read_midi(c.midi_path.read_bytes(), name=c.name), config=CONFIG)) for c in picked]


def canonical(notes: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Notes sorted by (quantised start, pitch, quantised end, velocity bin): pairs originals with decodings."""
    keys = (velocity_bin(notes[:, 3], config=config), quantise_times(notes[:, 1], config=config), notes[:, 2],
            quantise_times(notes[:, 0], config=config))
    return notes[np.lexsort(keys)]


def assert_round_trip(notes: np.ndarray, config: FeatureConfig) -> None:
    tokens = midi_like_tokens(notes, config=config)
    decoded = notes_from_tokens(tokens, config=config)
    assert decoded.shape == notes.shape
    original, back = canonical(notes, config), canonical(decoded, config)
    # Rounding to the nearest step: each time moves by at most half a step (exactly representable bound, plus
    # float rounding of ``t * 100`` and ``steps / 100``).
    half_step = config.time_shift_ms / 2000.0
    assert np.abs(back[:, :2] - original[:, :2]).max() <= half_step + 1e-9
    np.testing.assert_array_equal(back[:, 2], original[:, 2])
    np.testing.assert_array_equal(velocity_bin(back[:, 3], config=config),
                                  velocity_bin(original[:, 3], config=config))


# --- round trip on real clips --------------------------------------------------------------------------------

def test_real_clips_round_trip_within_half_a_step(emopia: Path) -> None:
    for name, notes in real_notes(emopia, 8):
        assert len(notes) > 50, name
        assert_round_trip(notes, CONFIG)


def test_real_clips_round_trip_with_coarser_steps(emopia: Path) -> None:
    config = FeatureConfig(time_shift_ms=20, max_shift_steps=50, velocity_bins=16)
    for _, notes in real_notes(emopia, 4):
        tokens = midi_like_tokens(notes, config=config)
        assert tokens.max() < config.vocab_size - 1
        assert_round_trip(notes, config)


def test_real_clip_tokens_are_well_formed(emopia: Path) -> None:
    for name, notes in real_notes(emopia, 4):
        tokens = midi_like_tokens(notes, config=CONFIG)
        assert tokens.dtype == np.int64 and tokens.ndim == 1
        assert tokens.min() >= 0 and tokens.max() < pad_id(CONFIG), "ids in the vocabulary, never PAD"
        is_shift = (tokens >= TIME_SHIFT) & (tokens < VEL)
        # Time shifts add up to the last event (the last note-off), each at most 1 s, and a gap is split
        # into as few shifts as possible: every shift but the last of a run is a full 1 s one.
        steps = tokens[is_shift] - TIME_SHIFT + 1
        assert steps.max() <= CONFIG.max_shift_steps
        assert steps.sum() == quantise_times(notes[:, 1], config=CONFIG).max(), name
        followed_by_shift = is_shift[:-1] & is_shift[1:]
        assert np.all(tokens[:-1][followed_by_shift] == shift(CONFIG.max_shift_steps))
        # A velocity token only when the bin changes, and always right before a note-on.
        velocity_positions = np.flatnonzero(tokens >= VEL)
        assert np.all(tokens[velocity_positions + 1] < NOTE_OFF)
        assert np.all(np.diff(tokens[velocity_positions]) != 0)
        assert tokens[~is_shift][0] >= VEL, "the first note-on of a sequence always gets a velocity token"
        assert (tokens < NOTE_OFF).sum() == len(notes) == ((tokens >= NOTE_OFF) & (tokens < TIME_SHIFT)).sum()


def test_note_order_does_not_change_tokens(emopia: Path, rng: np.random.Generator) -> None:
    _, notes = real_notes(emopia, 4)[1]
    shuffled = notes[rng.permutation(len(notes))]
    np.testing.assert_array_equal(midi_like_tokens(shuffled, config=CONFIG), midi_like_tokens(notes, config=CONFIG))


# --- exact encodings ----------------------------------------------------------------------------------------

def test_encodes_a_small_performance_exactly() -> None:
    notes = np.array([[0.0, 0.5, 60, 80],
                      [0.25, 1.5, 64, 81],  # same velocity bin as 80 (bin 20): no velocity token
                      [2.0, 3.456, 67, 100]])  # ends 1.456 s later: a full 1 s shift, then 0.46 s
    expected = [VEL + 20, NOTE_ON + 60, shift(25), NOTE_ON + 64, shift(25), NOTE_OFF + 60, shift(100),
                NOTE_OFF + 64, shift(50), VEL + 25, NOTE_ON + 67, shift(100), shift(46), NOTE_OFF + 67]
    assert midi_like_tokens(notes, config=CONFIG).tolist() == expected


def test_restruck_key_and_zero_length_notes_round_trip() -> None:
    notes = np.array([[0.0, 0.5, 60, 80],
                      [0.5, 0.7, 60, 80],  # re-struck at the release: note-off must come first
                      [1.001, 1.004, 60, 30],  # shorter than half a step: rounds to zero length at 1.0 s
                      [0.996, 1.2, 60, 90]])  # same pitch and rounded onset, struck earlier: must close later
    tokens = midi_like_tokens(notes, config=CONFIG)
    assert tokens.tolist() == [VEL + 20, NOTE_ON + 60, shift(50), NOTE_OFF + 60, NOTE_ON + 60, shift(20),
                               NOTE_OFF + 60, shift(30), VEL + 7, NOTE_ON + 60, VEL + 22, NOTE_ON + 60,
                               NOTE_OFF + 60, shift(20), NOTE_OFF + 60]
    np.testing.assert_allclose(notes_from_tokens(tokens, config=CONFIG),
                               [[0.0, 0.5, 60, 81], [0.5, 0.7, 60, 81], [1.0, 1.0, 60, 29], [1.0, 1.2, 60, 89]])


def test_empty_inputs() -> None:
    assert midi_like_tokens(np.zeros((0, 4)), config=CONFIG).shape == (0,)
    assert notes_from_tokens(np.zeros(0, dtype=np.int64), config=CONFIG).shape == (0, 4)


# --- decoder on imperfect sequences -------------------------------------------------------------------------

def test_decoder_tolerates_padding_stray_offs_and_unclosed_notes() -> None:
    pad = pad_id(CONFIG)
    tokens = np.array([NOTE_ON + 50,  # before any velocity token: the default velocity's bin
                       NOTE_OFF + 61,  # nothing open: ignored
                       VEL + 31, NOTE_ON + 60, shift(10), NOTE_OFF + 60, NOTE_ON + 62, shift(5), pad, pad])
    np.testing.assert_allclose(notes_from_tokens(tokens, config=CONFIG),
                               [[0.0, 0.15, 50, 65], [0.0, 0.1, 60, 125], [0.1, 0.15, 62, 125]])


@pytest.mark.parametrize("tokens", [np.array([CONFIG.vocab_size]), np.array([-1]), np.zeros((2, 2), np.int64),
                                    np.array([1.5])])
def test_decoder_rejects_invalid_ids(tokens: np.ndarray) -> None:
    with pytest.raises(ValueError):
        notes_from_tokens(tokens, config=CONFIG)


@pytest.mark.parametrize("notes", [np.zeros((3, 3)), np.array([[-0.1, 0.5, 60, 80]]),
                                   np.array([[0.5, 0.4, 60, 80]]), np.array([[0.0, 0.5, 128, 80]]),
                                   np.array([[0.0, 0.5, 60.5, 80]]), np.array([[0.0, np.nan, 60, 80]])])
def test_encoder_rejects_malformed_notes(notes: np.ndarray) -> None:
    with pytest.raises(ValueError):
        midi_like_tokens(notes, config=CONFIG)


# --- vocabulary and velocity bins ---------------------------------------------------------------------------

def test_vocabulary_layout() -> None:
    assert (NOTE_ON, NOTE_OFF, TIME_SHIFT, VEL) == (0, 128, 256, 356)
    assert pad_id(CONFIG) == VEL + CONFIG.velocity_bins == CONFIG.vocab_size - 1 == 388


def test_velocity_bins_of_32() -> None:
    velocities = np.arange(128)
    assert velocity_bin(velocities, config=CONFIG).tolist() == (velocities // 4).tolist()
    assert velocity_bin(127, config=CONFIG) == 31 and isinstance(velocity_bin(100, config=CONFIG), int)
    assert bin_velocity(np.arange(32), config=CONFIG).tolist() == list(range(1, 128, 4))


@pytest.mark.parametrize("bins", [1, 3, 5, 16, 100, 128])
def test_velocity_bins_partition_0_to_127(bins: int) -> None:
    config = FeatureConfig(velocity_bins=bins)
    of_velocity = velocity_bin(np.arange(128), config=config)
    assert of_velocity[0] == 0 and np.all(np.diff(of_velocity) >= 0)
    assert set(of_velocity.tolist()) == set(range(bins)), "every bin holds some velocity"
    representatives = bin_velocity(np.arange(bins), config=config)
    np.testing.assert_array_equal(velocity_bin(representatives, config=config), np.arange(bins))
