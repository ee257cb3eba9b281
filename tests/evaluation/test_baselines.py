"""The paper's linear baselines (Symbolic-LR, Audio-LR) on real EMOPIA clips."""
from __future__ import annotations

import numpy as np
import pytest

from mer.config import FeatureConfig
from mer.errors import BadInputError
from mer.evaluation.baselines import (SYMBOLIC_FEATURE_NAMES, audio_feature_names, audio_features, fit_linear_baseline,
                                      real_frames, symbolic_features)
from mer.features import SUMMARY_SIZE, ItemFeatures, extract_features
from mer.features.midi import piano_notes, read_midi
from mer.features.render import render_audio
from mer.train.emopia import load_split

CONFIG = FeatureConfig()


def balanced(clips, per_quadrant):
    """The first ``per_quadrant`` clips of each quadrant, in split order."""
    return [c for q in range(4) for c in [c for c in clips if c.quadrant == q][:per_quadrant]]


def symbolic_design(clips):
    x = np.stack([
        symbolic_features(piano_notes(read_midi(c.midi_path.read_bytes(), name=c.name), config=CONFIG), name=c.name)
        for c in clips
    ])
    return x, np.array([c.quadrant for c in clips])


def test_symbolic_features_of_two_notes_by_hand():
    # C4 (0-1 s, velocity 100) and E4 (0.5-2 s, velocity 60).
    notes = np.array([[0.0, 1.0, 60, 100], [0.5, 2.0, 64, 60]])
    f = dict(zip(SYMBOLIC_FEATURE_NAMES, symbolic_features(notes)))
    assert len(SYMBOLIC_FEATURE_NAMES) == len(set(SYMBOLIC_FEATURE_NAMES))
    assert f["note_density"] == pytest.approx(1.0)  # 2 notes over 2 s
    assert f["ioi_mean"] == pytest.approx(0.5) and f["ioi_std"] == pytest.approx(0.0)
    assert f["pitch_mean"] == pytest.approx(62) and f["pitch_range"] == pytest.approx(4)
    assert f["velocity_mean"] == pytest.approx(80) and f["velocity_std"] == pytest.approx(20)
    assert f["note_length_mean"] == pytest.approx(1.25)
    assert f["polyphony"] == pytest.approx(2.5 / 2.0)  # 2.5 note-seconds over 2 s
    # Pitch classes weighted by length: C 1 s, E 1.5 s.
    assert f["pitch_class_0"] == pytest.approx(0.4) and f["pitch_class_4"] == pytest.approx(0.6)
    assert sum(f[f"pitch_class_{i}"] for i in range(12)) == pytest.approx(1.0)


def test_major_and_minor_triads_differ_in_key_correlation():
    major = np.array([[0.0, 1.0, p, 80] for p in (60, 64, 67)])  # C E G
    minor = np.array([[0.0, 1.0, p, 80] for p in (60, 63, 67)])  # C Eb G
    names = list(SYMBOLIC_FEATURE_NAMES)
    i = names.index("major_minus_minor")
    assert symbolic_features(major)[i] > 0 > symbolic_features(minor)[i]


@pytest.mark.parametrize("notes", [np.zeros((0, 4)), np.zeros((3, 3))])
def test_symbolic_features_reject_bad_notes(notes):
    with pytest.raises(BadInputError, match="clip.mid"):
        symbolic_features(notes, name="clip.mid")


def test_symbolic_lr_learns_emopia(emopia):
    """Fitted on the whole training split, C chosen on val: well above chance (0.25) on the unseen test split."""
    train, val, test = (symbolic_design(load_split(emopia, s)) for s in ("train", "val", "test"))
    baseline = fit_linear_baseline(*train, *val)
    assert set(baseline.val_accuracy) and baseline.c in baseline.val_accuracy
    assert baseline.val_accuracy[baseline.c] == max(baseline.val_accuracy.values())
    probs = baseline.predict_proba(test[0])
    assert probs.shape == (len(test[1]), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert np.mean(probs.argmax(axis=1) == test[1]) > 0.45  # the paper's Symbolic-LR: 0.581; chance 0.25


@pytest.fixture(scope="module")
def audio_subset(emopia):
    """Rendered-audio features of 8 train clips per quadrant and 3 val clips per quadrant."""
    def design(clips):
        rows = []
        for c in clips:
            midi = read_midi(c.midi_path.read_bytes(), name=c.name)
            audio = render_audio(midi, config=CONFIG, name=c.name)
            rows.append(audio_features(extract_features(name=c.name, midi=midi, audio=audio, config=CONFIG),
                                       config=CONFIG))
        return np.stack(rows), np.array([c.quadrant for c in clips])

    return design(balanced(load_split(emopia, "train"), 8)), design(balanced(load_split(emopia, "val"), 3))


def test_audio_lr_learns_its_training_clips(audio_subset):
    (x_train, y_train), (x_val, y_val) = audio_subset
    assert x_train.shape == (32, len(audio_feature_names(CONFIG))) == (32, 2 * (12 + CONFIG.n_mfcc))
    assert np.all(np.isfinite(x_train))
    baseline = fit_linear_baseline(x_train, y_train, x_val, y_val)
    assert np.mean(baseline.predict_proba(x_train).argmax(axis=1) == y_train) > 0.6  # chance 0.25


def feature_item(chroma_windows, mfcc_windows, present=(True, True, True)):
    w, _, f = chroma_windows.shape
    return ItemFeatures(name="piece", duration=30.0, window_starts=np.arange(w) * 10.0,
                        tokens=np.zeros((w, 4)), token_lengths=np.zeros(w), chroma=chroma_windows,
                        mfcc=mfcc_windows, present=np.array(present), summary=np.zeros((w, SUMMARY_SIZE)),
                        pitch_classes=np.zeros(12))


def test_audio_features_ignore_the_padding_and_how_the_piece_was_cut_into_windows(rng):
    chroma = rng.uniform(0.1, 1.0, (2, 12, 10)).astype(np.float32)
    mfcc = rng.normal(-5.0, 3.0, (2, 4, 10)).astype(np.float32)
    chroma[1, :, 6:] = 0.0  # the last window's final 4 frames are past the audio's end
    mfcc[1, :, 6:] = 0.0
    padded = feature_item(chroma, mfcc)
    assert real_frames(padded).sum(axis=1).tolist() == [10, 6]
    # The same 16 frames of audio as one window without padding: a clip-level feature cannot tell them apart.
    whole = feature_item(np.concatenate([chroma[0], chroma[1, :, :6]], axis=1)[None],
                         np.concatenate([mfcc[0], mfcc[1, :, :6]], axis=1)[None])
    np.testing.assert_allclose(audio_features(padded, config=CONFIG), audio_features(whole, config=CONFIG),
                               rtol=1e-5)
    # Whatever the chromagram holds where the MFCCs say there is no audio stays out of the features.
    junk = feature_item(chroma.copy(), mfcc)
    junk.chroma[1, :, 6:] = 1.0
    np.testing.assert_allclose(audio_features(junk, config=CONFIG), audio_features(whole, config=CONFIG), rtol=1e-5)


def test_audio_features_need_audio():
    item = feature_item(np.zeros((1, 12, 5)), np.zeros((1, 4, 5)), present=(True, False, False))
    with pytest.raises(BadInputError, match="piece"):
        audio_features(item, config=CONFIG)


def test_predict_proba_keeps_quadrant_columns_when_training_lacks_one():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 3], 10)  # no Q3 clips
    x = rng.normal(size=(30, 3)) + y[:, None]
    baseline = fit_linear_baseline(x, y, x, y)
    probs = baseline.predict_proba(x)
    assert probs.shape == (30, 4)
    np.testing.assert_array_equal(probs[:, 2], 0.0)
    assert np.mean(probs.argmax(axis=1) == y) > 0.8
