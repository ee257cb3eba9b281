"""Temperature scaling: fitted on val it lowers val NLL, keeps every decision, and ECE measures what it should."""
from __future__ import annotations

import numpy as np
import pytest

from mer.model.calibration import (
    clip_probabilities, expected_calibration_error, fit_temperature, nll, reliability, softmax,
)


def overconfident_logits(rng, clips=300, windows=2, sharpness=4.0):
    """Logits of a model that is right 60 % of the time but says so with ~95 % confidence."""
    labels = rng.integers(0, 4, clips)
    guess = np.where(rng.random(clips) < 0.6, labels, rng.integers(0, 4, clips))
    logits = rng.normal(0, 0.3, (clips * windows, 4))
    groups = np.repeat(np.arange(clips), windows)
    logits[np.arange(len(groups)), guess[groups]] += sharpness
    return logits, groups, labels


def test_fitted_temperature_lowers_nll_and_ece_and_keeps_every_prediction(rng):
    logits, groups, labels = overconfident_logits(rng)
    by_clip = dict(enumerate(labels))
    temperature = fit_temperature(logits, groups, by_clip)
    assert temperature > 1.0  # an overconfident model is cooled down
    _, before = clip_probabilities(logits, groups)
    _, after = clip_probabilities(logits, groups, temperature)
    assert nll(after, labels) < nll(before, labels)
    assert expected_calibration_error(after, labels) < expected_calibration_error(before, labels)
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))


def test_temperature_fitted_on_one_sample_helps_on_another_of_the_same_model(rng):
    logits, groups, labels = overconfident_logits(rng)
    temperature = fit_temperature(logits, groups, dict(enumerate(labels)))
    test_logits, test_groups, test_labels = overconfident_logits(np.random.default_rng(7))
    _, before = clip_probabilities(test_logits, test_groups)
    _, after = clip_probabilities(test_logits, test_groups, temperature)
    assert nll(after, test_labels) < nll(before, test_labels)


def test_a_perfectly_calibrated_forecaster_has_small_ece_and_a_confident_wrong_one_large(rng):
    confidence = rng.uniform(0.25, 1.0, 20_000)
    correct = rng.random(20_000) < confidence
    labels = np.zeros(20_000, dtype=int)
    probs = np.zeros((20_000, 4))
    top = np.where(correct, 0, 1)
    probs[np.arange(20_000), top] = confidence
    rest = (1 - confidence) / 3
    for j in range(4):
        probs[:, j] = np.where(top == j, confidence, rest)
    assert expected_calibration_error(probs, labels) < 0.02
    wrong = np.tile([0.01, 0.97, 0.01, 0.01], (100, 1))
    assert expected_calibration_error(wrong, np.zeros(100, dtype=int)) == pytest.approx(0.97)
    mean_conf, accuracy, counts = reliability(wrong, np.zeros(100, dtype=int))
    assert counts.sum() == 100 and accuracy[np.nanargmax(mean_conf)] == 0.0


def test_clip_probabilities_average_the_windows_of_each_clip():
    logits = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    clips, probs = clip_probabilities(logits, np.array(["b", "b", "a"]))
    assert list(clips) == ["b", "a"]
    np.testing.assert_allclose(probs[0], [0.4, 0.4, 0.1, 0.1])
    np.testing.assert_allclose(softmax(logits[2:]), [[0.25] * 4])
