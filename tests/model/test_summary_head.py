"""The summary head: off, it changes nothing; on, the model's probabilities are its stated mixture; it travels
with the weights (artifact, ensemble)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mer.config import SUMMARY_SIZE
from mer.model import MerEnsemble, MerModel, load_artifact, predict_windows, save_artifact
from tiny import random_windows, tiny_config

CONFIG = tiny_config(summary_film=True)
WITH_HEAD = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, summary_head=True))


def batch(rng, n=6):
    return random_windows(CONFIG, rng, n)


def fitted(model, rng, blend):
    model.summary_head.set(mean=rng.standard_normal(SUMMARY_SIZE), scale=rng.random(SUMMARY_SIZE) + 0.5,
                           weight=rng.standard_normal((4, SUMMARY_SIZE)), bias=rng.standard_normal(4), blend=blend)
    return model


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_an_unfitted_head_leaves_every_output_of_the_network_unchanged(rng):
    torch.manual_seed(0)
    plain = MerModel(CONFIG).eval()
    headed = MerModel(WITH_HEAD).eval()
    headed.load_state_dict(plain.state_dict(), strict=False)
    inputs = batch(rng)
    a, b = predict_windows(plain, inputs, device="cpu"), predict_windows(headed, inputs, device="cpu")
    for key in ("quadrant_probs", "arousal_prob", "valence_prob", "attention"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


@pytest.mark.parametrize("blend", [0.3, 1.0])
def test_a_fitted_head_gives_the_stated_mixture_and_leaves_arousal_and_valence_alone(rng, blend):
    torch.manual_seed(0)
    plain = MerModel(CONFIG).eval()
    headed = fitted(MerModel(WITH_HEAD).eval(), rng, blend)
    headed.load_state_dict({k: v for k, v in plain.state_dict().items()}, strict=False)
    inputs = batch(rng)
    network, mixed = predict_windows(plain, inputs, device="cpu"), predict_windows(headed, inputs, device="cpu")
    head = headed.summary_head
    regression = softmax((inputs["summary"] - head.mean.numpy()) / head.scale.numpy() @ head.weight.numpy().T
                         + head.bias.numpy())
    np.testing.assert_allclose(mixed["quadrant_probs"], (1 - blend) * network["quadrant_probs"] + blend * regression,
                               atol=1e-5)
    np.testing.assert_allclose(mixed["arousal_prob"], network["arousal_prob"], atol=1e-6)


def test_a_fitted_head_without_the_summary_input_is_an_error_not_a_silent_fallback(rng):
    model = fitted(MerModel(dataclasses.replace(WITH_HEAD, model=dataclasses.replace(
        WITH_HEAD.model, summary_film=False))).eval(), rng, 0.5)
    inputs = batch(rng)
    del inputs["summary"]
    with pytest.raises(ValueError, match="summary"):
        predict_windows(model, inputs, device="cpu")


def test_blend_weights_outside_zero_to_one_are_refused(rng):
    with pytest.raises(ValueError, match="blend"):
        fitted(MerModel(WITH_HEAD), rng, 1.5)


def test_the_head_travels_in_the_artifact_and_in_every_member_of_an_ensemble(tmp_path, rng):
    models = [fitted(MerModel(WITH_HEAD).eval(), rng, 0.4) for _ in range(2)]
    inputs = batch(rng)
    url = save_artifact(models[0].state_dict(), config=WITH_HEAD, storage=str(tmp_path), meta={})
    loaded = load_artifact(url, device="cpu")
    np.testing.assert_allclose(predict_windows(loaded.model, inputs, device="cpu")["quadrant_probs"],
                               predict_windows(models[0], inputs, device="cpu")["quadrant_probs"], atol=1e-6)
    ensemble = MerEnsemble.from_members(models).eval()
    each = [predict_windows(m, inputs, device="cpu")["quadrant_probs"] for m in models]
    np.testing.assert_allclose(predict_windows(ensemble, inputs, device="cpu")["quadrant_probs"],
                               np.mean(each, axis=0), atol=1e-5)


def test_a_window_without_notes_gets_the_network_alone(rng):
    """An audio-only window's summary (key from the chromagram, note statistics zero) is not what the regression
    was fitted on, so the head stays out of it."""
    torch.manual_seed(0)
    plain = MerModel(CONFIG).eval()
    headed = fitted(MerModel(WITH_HEAD).eval(), rng, 0.5)
    headed.load_state_dict({k: v for k, v in plain.state_dict().items()}, strict=False)
    inputs = batch(rng)
    inputs["present"][:3, 0] = False  # no MIDI
    inputs["token_lengths"][3] = 0  # MIDI, but no notes in this window
    network, mixed = predict_windows(plain, inputs, device="cpu"), predict_windows(headed, inputs, device="cpu")
    np.testing.assert_allclose(mixed["quadrant_probs"][:4], network["quadrant_probs"][:4], atol=1e-6)
    assert not np.allclose(mixed["quadrant_probs"][4:], network["quadrant_probs"][4:], atol=1e-3)
