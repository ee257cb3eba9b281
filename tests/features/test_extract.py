"""Features: what the chromagram and MFCCs show (a triad's pitch classes, transposition as a roll, loudness in the
energy coefficient only), the window rule, and per-window tokens and frames."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from mer.config import FeatureConfig
from mer.errors import BadInputError
from mer.features import ItemFeatures, chromagram, extract_features, mfcc, window_starts
from mer.features.midi import piano_notes, read_midi
from mer.features.render import render_audio
from mer.features.tokens import midi_like_tokens, notes_from_tokens, pad_id

CONFIG = FeatureConfig()
SR, HOP = CONFIG.sample_rate, CONFIG.hop_length
SHORT = replace(CONFIG, window_seconds=4.0, hop_seconds=4.0)  # several windows from a few seconds of audio
CLIP = "Q1_0vLPYiPN7qY_0"


@pytest.fixture(scope="module")
def clip(emopia: Path) -> tuple[pretty_midi.PrettyMIDI, np.ndarray]:
    """A real EMOPIA clip (about 20 s) and its rendering."""
    midi = read_midi((emopia / "midis" / f"{CLIP}.mid").read_bytes(), name=CLIP)
    return midi, render_audio(midi, config=CONFIG, name=CLIP)


def sine(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_midi(notes: list[tuple[float, float, int, int]]) -> pretty_midi.PrettyMIDI:
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for s, e, p, v in notes]
    midi.instruments.append(piano)
    return midi


# --- chromagram and MFCCs -------------------------------------------------------------------------------------

def piano_like(pitches: list[int], seconds: float = 2.0) -> np.ndarray:
    """Equal-tempered tones with three harmonics each (MIDI ``pitches``), mixed."""
    t = np.arange(int(seconds * SR)) / SR
    tones = [sum(0.5 / k * np.sin(2 * np.pi * k * 440.0 * 2 ** ((p - 69) / 12) * t) for k in (1, 2, 3))
             for p in pitches]
    return (sum(tones) / len(tones)).astype(np.float32)


def test_a_c_major_triad_peaks_at_c_e_and_g() -> None:
    chroma = chromagram(piano_like([60, 64, 67]), config=CONFIG)  # C4 E4 G4
    assert chroma.shape[0] == 12 and chroma.dtype == np.float32
    assert set(np.argsort(chroma.mean(axis=1))[-3:].tolist()) == {0, 4, 7}  # C=0, E=4, G=7


@pytest.mark.parametrize("semitones", [2, 5, -3])
def test_a_transposed_chord_rolls_the_chromagram(semitones: int) -> None:
    chroma = chromagram(piano_like([60, 64, 67]), config=CONFIG).mean(axis=1)
    moved = chromagram(piano_like([60 + semitones, 64 + semitones, 67 + semitones]), config=CONFIG).mean(axis=1)
    np.testing.assert_allclose(moved, np.roll(chroma, semitones), atol=0.15)
    assert set(np.argsort(moved)[-3:].tolist()) == {(c + semitones) % 12 for c in (0, 4, 7)}


def test_silence_has_the_lowest_energy_coefficient(rng: np.random.Generator) -> None:
    silence = np.zeros(SR, dtype=np.float32)
    chord = piano_like([60, 64, 67], seconds=1.0)
    noise = (0.3 * rng.standard_normal(SR)).astype(np.float32)
    energy = [mfcc(audio, config=CONFIG)[0].mean() for audio in (silence, 0.1 * chord, chord, noise)]
    assert energy == sorted(energy) and len(set(energy)) == 4  # coefficient 0 rises with loudness


def test_loudness_moves_only_the_energy_coefficient() -> None:
    chord = piano_like([60, 64, 67], seconds=1.0)
    quiet, loud = mfcc(chord, config=CONFIG), mfcc(2.0 * chord, config=CONFIG)
    assert quiet.shape == (CONFIG.n_mfcc, 1 + len(chord) // HOP)
    assert np.all(loud[0] > quiet[0])
    np.testing.assert_allclose(loud[1:], quiet[1:], atol=1e-3)  # the spectral shape (timbre) is unchanged


def test_a_440_hz_sine_peaks_at_a() -> None:
    chroma = chromagram(sine(1.0, 440.0), config=CONFIG)
    assert chroma.dtype == np.float32
    assert np.all(np.argmax(chroma, axis=0) == 9)  # C=0 ... A=9, in every frame


@pytest.mark.parametrize("samples", [SR, SR + 1, 3 * SR // 2])
def test_frames_are_one_per_hop_plus_one(samples: int) -> None:
    audio = sine(samples / SR + 1)[:samples]
    assert mfcc(audio, config=CONFIG).shape == (CONFIG.n_mfcc, 1 + samples // HOP)
    assert chromagram(audio, config=CONFIG).shape == (12, 1 + samples // HOP)


# --- windows --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("duration", "hop", "expected"),
    [
        (0.0, 30.0, [0.0]),  # nothing: still one window
        (10.0, 30.0, [0.0]),  # short: one zero-padded window
        (30.0, 30.0, [0.0]),  # exactly one window
        (30.5, 30.0, [0.0]),  # half a second left over: dropped
        (37.4, 30.0, [0.0]),  # just under a quarter window left over: dropped
        (37.5, 30.0, [0.0, 30.0]),  # a quarter window: kept
        (60.0, 30.0, [0.0, 30.0]),
        (70.0, 30.0, [0.0, 30.0, 60.0]),
        (44.0, 15.0, [0.0, 15.0]),  # overlapping: the 15 s window already reaches the end
        (60.0, 15.0, [0.0, 15.0, 30.0]),
    ],
)
def test_window_starts(duration: float, hop: float, expected: list[float]) -> None:
    starts = window_starts(duration, config=replace(CONFIG, hop_seconds=hop))
    assert starts.dtype == np.float64
    np.testing.assert_array_equal(starts, expected)


def test_a_long_piece_is_covered_to_its_end_without_drift() -> None:
    starts = window_starts(3 * 3600.0 + 20.0, config=CONFIG)
    assert len(starts) == 361 and starts[-1] == 10_800.0
    np.testing.assert_array_equal(np.diff(starts), 30.0)


# --- extraction -----------------------------------------------------------------------------------------------

def test_a_real_clip_gives_every_branch_its_input(clip) -> None:
    midi, audio = clip
    item = extract_features(name=CLIP, midi=midi, audio=audio, config=CONFIG)
    frames = CONFIG.frames_per_window
    assert item.name == CLIP and item.duration == pytest.approx(max(midi.get_end_time(), len(audio) / SR))
    windows = len(window_starts(item.duration, config=CONFIG))
    assert item.tokens.shape == (windows, CONFIG.max_tokens) and item.tokens.dtype == np.int64
    assert item.token_lengths.shape == (windows,)
    assert item.chroma.shape == (windows, 12, frames) and item.chroma.dtype == np.float32
    assert item.mfcc.shape == (windows, CONFIG.n_mfcc, frames) and item.mfcc.dtype == np.float32
    assert item.present.tolist() == [True, True, True]
    # The clip is shorter than a window: its one window is the whole piece, then padding.
    assert windows == 1
    full = midi_like_tokens(piano_notes(midi, config=CONFIG), config=CONFIG)
    length = int(item.token_lengths[0])
    assert length == len(full) <= CONFIG.max_tokens
    np.testing.assert_array_equal(item.tokens[0, :length], full)
    assert np.all(item.tokens[0, length:] == pad_id(CONFIG))
    whole = chromagram(audio, config=CONFIG)
    np.testing.assert_array_equal(item.chroma[0, :, : whole.shape[1]], whole)
    assert not item.chroma[0, :, whole.shape[1]:].any()


def test_each_window_holds_the_notes_sounding_in_it(clip) -> None:
    midi, audio = clip
    config = replace(CONFIG, window_seconds=8.0, hop_seconds=8.0, max_tokens=4096)
    item = extract_features(name=CLIP, midi=midi, audio=audio, config=config)
    notes = piano_notes(midi, config=config)
    assert item.num_windows == 3  # ~20 s: windows at 0, 8 and 16 s
    for window, start in enumerate(item.window_starts):
        length = int(item.token_lengths[window])
        assert 0 < length < config.max_tokens
        assert np.all(item.tokens[window, :length] != pad_id(config))
        assert np.all(item.tokens[window, length:] == pad_id(config))
        decoded = notes_from_tokens(item.tokens[window, :length], config=config)
        sounding = notes[(notes[:, 0] < start + 8.0) & (notes[:, 1] > start)]
        assert Counter(decoded[:, 2].tolist()) == Counter(sounding[:, 2].tolist())
        assert decoded[:, :2].min() >= 0.0 and decoded[:, :2].max() <= 8.0 + 0.005


def test_notes_are_shifted_to_their_window_and_clipped_at_its_edges() -> None:
    midi = make_midi([(1.0, 2.0, 60, 80), (3.5, 4.5, 64, 80), (5.0, 5.5, 67, 80)])
    item = extract_features(name="x", midi=midi, audio=None, config=SHORT)
    np.testing.assert_array_equal(item.window_starts, [0.0, 4.0])
    decoded = [notes_from_tokens(item.tokens[w, : item.token_lengths[w]], config=SHORT)[:, :3] for w in (0, 1)]
    np.testing.assert_allclose(decoded[0], [[1.0, 2.0, 60], [3.5, 4.0, 64]], atol=0.006)
    np.testing.assert_allclose(decoded[1], [[0.0, 0.5, 64], [1.0, 1.5, 67]], atol=0.006)


def test_long_token_sequences_keep_their_beginning(clip) -> None:
    midi, _ = clip
    config = replace(CONFIG, max_tokens=64)
    item = extract_features(name=CLIP, midi=midi, audio=None, config=config)
    full = midi_like_tokens(piano_notes(midi, config=config), config=config)
    assert item.tokens.shape == (1, 64) and item.token_lengths.tolist() == [64]
    np.testing.assert_array_equal(item.tokens[0], full[:64])


def test_midi_only_items_have_empty_audio_branches() -> None:
    midi = make_midi([(0.0, 6.0, 60, 80)])
    item = extract_features(name="m", midi=midi, audio=None, config=SHORT)
    assert item.present.tolist() == [True, False, False]
    assert item.duration == 6.0 and item.num_windows == 2
    assert not item.chroma.any() and not item.mfcc.any()
    assert item.chroma.shape == (2, 12, SHORT.frames_per_window)


def test_audio_only_items_have_an_empty_symbolic_branch() -> None:
    audio = sine(6.0)
    item = extract_features(name="a", midi=None, audio=audio, config=SHORT)
    assert item.present.tolist() == [False, True, True]
    assert np.all(item.tokens == pad_id(SHORT)) and not item.token_lengths.any()
    assert item.duration == pytest.approx(6.0) and item.num_windows == 2
    assert np.all(np.argmax(item.chroma[0], axis=0) == 9)


def test_window_frames_are_slices_of_the_whole_piece() -> None:
    audio = np.concatenate([sine(4.0, 261.6), sine(4.0, 440.0), sine(2.0, 329.6)])  # C4, A4, E4
    item = extract_features(name="a", midi=None, audio=audio, config=SHORT)
    whole_chroma, whole_mfcc = chromagram(audio, config=SHORT), mfcc(audio, config=SHORT)
    frames = SHORT.frames_per_window
    for window, start in enumerate(item.window_starts):
        first = round(start * SR / HOP)
        piece = whole_chroma[:, first:first + frames]
        np.testing.assert_array_equal(item.chroma[window, :, : piece.shape[1]], piece)
        np.testing.assert_array_equal(item.mfcc[window, :, : piece.shape[1]], whole_mfcc[:, first:first + frames])
        assert not item.chroma[window, :, piece.shape[1]:].any()
    # Each window hears its own note: C (0), then A (9), then E (4).
    assert [int(np.argmax(item.chroma[w, :, 20:60].mean(axis=1))) for w in range(3)] == [0, 9, 4]


def test_audio_shorter_than_the_midi_is_zero_padded() -> None:
    midi = make_midi([(0.0, 10.0, 60, 80)])
    item = extract_features(name="x", midi=midi, audio=sine(5.0), config=SHORT)
    np.testing.assert_array_equal(item.window_starts, [0.0, 4.0, 8.0])
    assert item.chroma[1, :, :10].any() and not item.chroma[2].any() and not item.mfcc[2].any()


def test_an_item_needs_midi_or_audio_that_is_not_silent() -> None:
    with pytest.raises(BadInputError, match="neither MIDI nor audio"):
        extract_features(name="nothing", midi=None, audio=None, config=CONFIG)
    with pytest.raises(BadInputError, match="silent"):
        extract_features(name="hush", midi=None, audio=np.zeros(SR, np.float32), config=CONFIG)
    with pytest.raises(BadInputError, match="no notes"):
        extract_features(name="blank", midi=pretty_midi.PrettyMIDI(), audio=None, config=CONFIG)


# --- window rows ----------------------------------------------------------------------------------------------

def test_window_rows_are_the_items_windows_and_rebuild_it(clip) -> None:
    midi, audio = clip
    item = extract_features(name=CLIP, midi=midi, audio=audio, config=replace(SHORT, max_tokens=256))
    rows = item.window_rows()
    assert len(rows) == item.num_windows == 5
    for index, row in enumerate(rows):
        assert set(row) == {"name", "window_index", "window_start", "duration", "tokens", "token_length",
                            "chroma", "mfcc", "present", "summary", "pitch_classes"}
        assert row["name"] == CLIP and row["window_index"] == index
        np.testing.assert_array_equal(row["chroma"], item.chroma[index])
        np.testing.assert_array_equal(row["tokens"], item.tokens[index])
        np.testing.assert_array_equal(row["present"], item.present)
    # The batch of rows, stacked, is the item's arrays; any row order rebuilds the same item.
    np.testing.assert_array_equal(np.stack([row["mfcc"] for row in rows]), item.mfcc)
    assert ItemFeatures.from_window_rows(rows[::-1]) == item


def test_rows_of_different_items_or_with_gaps_do_not_rebuild_one_item() -> None:
    a = extract_features(name="a", midi=None, audio=sine(9.0), config=SHORT)
    b = extract_features(name="b", midi=None, audio=sine(9.0), config=SHORT)
    with pytest.raises(ValueError, match="several items"):
        ItemFeatures.from_window_rows(a.window_rows()[:1] + b.window_rows()[1:])
    with pytest.raises(ValueError, match="window indices"):
        ItemFeatures.from_window_rows(a.window_rows()[1:])
    with pytest.raises(ValueError, match="windows"):
        replace(a, token_lengths=np.zeros(a.num_windows + 1, np.int64))


def test_every_window_carries_its_key_and_note_summary_and_an_audio_only_item_its_key_from_the_chroma(clip) -> None:
    from mer.features import piano_notes, summary_descriptors
    from mer.features.extract import window_notes

    midi, audio = clip
    item = extract_features(name=CLIP, midi=midi, audio=audio, config=SHORT)
    notes = piano_notes(midi, config=SHORT)
    for index, start in enumerate(item.window_starts):
        expected = summary_descriptors(notes=window_notes(notes, start, SHORT.window_seconds), chroma=None)
        np.testing.assert_allclose(item.summary[index], expected, atol=1e-6)
    heard = extract_features(name=CLIP, midi=None, audio=audio, config=SHORT)
    assert heard.pitch_classes.sum() == pytest.approx(1.0)
    assert not heard.summary[:, -8:].any()  # no notes, no note statistics
    # The rendering's pitch classes follow the score's (overtones blur them, so not exactly).
    assert np.corrcoef(heard.pitch_classes, item.pitch_classes)[0, 1] > 0.8
