"""The summary head: off, it changes nothing; on, the model's probabilities are its stated mixture; it travels
with the weights (artifact, ensemble)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mer.config import SUMMARY_KEY_SIZE, SUMMARY_SIZE
from mer.model import MerEnsemble, MerModel, load_artifact, predict_windows, save_artifact
from tiny import random_windows, tiny_config

CONFIG = tiny_config(summary_film=True)
WITH_HEAD = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, summary_head=True))
WITH_TEXTURE = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, summary_texture=True))
WITH_HEAD_AND_TEXTURE = dataclasses.replace(WITH_HEAD, model=dataclasses.replace(WITH_HEAD.model,
                                                                                   summary_texture=True))
WITH_KERNEL_HEAD = dataclasses.replace(WITH_HEAD, model=dataclasses.replace(WITH_HEAD.model, summary_texture=True,
                                                                             summary_kernel_centres=8))


def batch(rng, n=6):
    return random_windows(CONFIG, rng, n)


def fitted(model, rng, blend):
    width, head = model.config.model.summary_width, model.summary_head
    centres = rng.standard_normal(head.centres.shape) if head.kernel else None
    model.summary_head.set(mean=rng.standard_normal(width), scale=rng.random(width) + 0.5,
                           weight=rng.standard_normal(head.weight.shape), bias=rng.standard_normal(4), blend=blend,
                           centres=centres)
    return model


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("config", [WITH_HEAD, WITH_KERNEL_HEAD], ids=["linear", "kernel"])
def test_an_unfitted_head_leaves_every_output_of_the_network_unchanged(rng, config):
    torch.manual_seed(0)
    plain = MerModel(dataclasses.replace(config, model=dataclasses.replace(
        config.model, summary_head=False, summary_kernel_centres=0))).eval()
    headed = MerModel(config).eval()
    headed.load_state_dict(plain.state_dict(), strict=False)
    inputs = batch(rng)
    a, b = predict_windows(plain, inputs, device="cpu"), predict_windows(headed, inputs, device="cpu")
    for key in ("quadrant_probs", "arousal_prob", "valence_prob", "attention"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_a_reset_head_gives_the_network_alone_again(rng):
    torch.manual_seed(0)
    plain = MerModel(CONFIG).eval()
    headed = fitted(MerModel(WITH_HEAD).eval(), rng, 0.7)
    headed.load_state_dict(plain.state_dict(), strict=False)
    inputs = batch(rng)
    assert not np.allclose(predict_windows(headed, inputs, device="cpu")["quadrant_probs"],
                           predict_windows(plain, inputs, device="cpu")["quadrant_probs"], atol=1e-3)
    headed.summary_head.reset()
    assert not headed.summary_head.active
    np.testing.assert_allclose(predict_windows(headed, inputs, device="cpu")["quadrant_probs"],
                               predict_windows(plain, inputs, device="cpu")["quadrant_probs"], atol=1e-6)


@pytest.mark.parametrize("texture", [False, True])
@pytest.mark.parametrize("blend", [0.3, 1.0])
def test_a_fitted_head_gives_the_stated_mixture_and_leaves_arousal_and_valence_alone(rng, blend, texture):
    torch.manual_seed(0)
    plain = MerModel(WITH_TEXTURE if texture else CONFIG).eval()
    headed = fitted(MerModel(WITH_HEAD_AND_TEXTURE if texture else WITH_HEAD).eval(), rng, blend)
    headed.load_state_dict({k: v for k, v in plain.state_dict().items()}, strict=False)
    inputs = batch(rng)
    network, mixed = predict_windows(plain, inputs, device="cpu"), predict_windows(headed, inputs, device="cpu")
    head = headed.summary_head
    read = inputs["summary"][:, :SUMMARY_SIZE if texture else SUMMARY_KEY_SIZE]  # the descriptors it reads
    regression = softmax((read - head.mean.numpy()) / head.scale.numpy() @ head.weight.numpy().T
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


def test_a_kernel_head_without_centres_and_a_linear_head_with_them_are_refused(rng):
    kernel, linear = MerModel(WITH_KERNEL_HEAD).summary_head, MerModel(WITH_HEAD).summary_head
    with pytest.raises(ValueError, match="needs its centres"):
        kernel.set(mean=kernel.mean.numpy(), scale=kernel.scale.numpy(), weight=kernel.weight.numpy(),
                   bias=kernel.bias.numpy(), blend=0.5)
    with pytest.raises(ValueError, match="has no centres"):
        linear.set(mean=linear.mean.numpy(), scale=linear.scale.numpy(), weight=linear.weight.numpy(),
                   bias=linear.bias.numpy(), blend=0.5, centres=np.zeros((8, SUMMARY_KEY_SIZE)))


@pytest.mark.parametrize("config", [WITH_HEAD, WITH_KERNEL_HEAD], ids=["linear", "kernel"])
def test_the_head_travels_in_the_artifact_and_in_every_member_of_an_ensemble(tmp_path, rng, config):
    models = [fitted(MerModel(config).eval(), rng, 0.4) for _ in range(2)]
    inputs = batch(rng)
    url = save_artifact(models[0].state_dict(), config=config, storage=str(tmp_path), meta={})
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


@pytest.mark.parametrize("blend", [0.0, 0.5])
def test_only_a_model_built_with_texture_reads_the_texture_descriptors(rng, blend):
    """Models trained before the texture existed read the summary's first descriptors and nothing after them, so
    they tag as they did from features that now carry more; a model built with texture responds to them."""
    torch.manual_seed(0)
    inputs = batch(rng)
    changed = dict(inputs, summary=inputs["summary"].copy())
    changed["summary"][:, SUMMARY_KEY_SIZE:] = rng.standard_normal((len(changed["summary"]),
                                                                   SUMMARY_SIZE - SUMMARY_KEY_SIZE))
    for config, reads_texture in ((WITH_HEAD, False), (WITH_HEAD_AND_TEXTURE, True)):
        model = fitted(MerModel(config).eval(), rng, blend)
        with torch.no_grad():  # FiLM starts as the identity: give it weights, so the summary moves the output
            for parameter in model.fusion.film.parameters():
                parameter.normal_(0.0, 0.5)
        before = predict_windows(model, inputs, device="cpu")["quadrant_probs"]
        after = predict_windows(model, changed, device="cpu")["quadrant_probs"]
        assert (np.abs(after - before).max() > 1e-4) == reads_texture


def test_a_summary_narrower_than_the_model_reads_is_refused_by_name(rng):
    model = MerModel(WITH_HEAD_AND_TEXTURE).eval()
    inputs = batch(rng)
    narrow = dict(inputs, summary=inputs["summary"][:, :SUMMARY_KEY_SIZE])
    refusal = f"summary has {SUMMARY_KEY_SIZE} descriptors; this model reads {SUMMARY_SIZE}"
    with pytest.raises(ValueError, match=refusal):
        predict_windows(model, narrow, device="cpu")
    predict_windows(MerModel(WITH_HEAD).eval(), narrow, device="cpu")  # a model of the first 25 takes it
