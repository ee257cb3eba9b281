"""A seed ensemble answers with its members' mean probabilities, and saves and loads as one calibrated artifact."""
from __future__ import annotations

import numpy as np
import torch

from mer.model import MerEnsemble, MerModel, load_artifact, predict_windows, save_artifact
from tiny import random_windows, tiny_config

CONFIG = tiny_config()


def batch(rng, n=5):
    return random_windows(CONFIG, rng, n)


def members(count=3):
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(MerModel(CONFIG).eval())
    return models


def test_the_ensemble_gives_the_mean_of_its_members_probabilities(rng):
    models = members()
    inputs = batch(rng)
    each = [predict_windows(m, inputs, device="cpu") for m in models]
    together = predict_windows(MerEnsemble.from_members(models).eval(), inputs, device="cpu")
    np.testing.assert_allclose(together["quadrant_probs"], np.mean([e["quadrant_probs"] for e in each], 0), atol=1e-5)
    np.testing.assert_allclose(together["arousal_prob"], np.mean([e["arousal_prob"] for e in each], 0), atol=1e-5)
    np.testing.assert_allclose(together["attention"], np.mean([e["attention"] for e in each], 0), atol=1e-5)


def test_an_ensemble_artifact_loads_with_its_members_and_its_temperature(tmp_path, rng):
    models = members(2)
    ensemble = MerEnsemble.from_members(models)
    url = save_artifact(ensemble.state_dict(), config=CONFIG, storage=str(tmp_path),
                        meta={"members": ["v-a", "v-b"], "calibration": {"temperature": 2.0}})
    loaded = load_artifact(url, device="cpu")
    assert isinstance(loaded.model, MerEnsemble) and len(loaded.model.members) == 2
    assert loaded.meta["members"] == ["v-a", "v-b"]
    inputs = batch(rng)
    raw = predict_windows(ensemble.eval(), inputs, device="cpu")["quadrant_probs"]
    calibrated = predict_windows(loaded.model, inputs, device="cpu")["quadrant_probs"]
    np.testing.assert_array_equal(calibrated.argmax(1), raw.argmax(1))  # a temperature changes no label
    assert (calibrated.max(1) < raw.max(1) + 1e-6).all()  # T = 2 makes every window less sure
    assert not np.allclose(calibrated, raw)


def test_members_of_different_configurations_are_refused():
    import pytest

    other = MerModel(tiny_config(gru_hidden=4))
    with pytest.raises(ValueError, match="one configuration"):
        MerEnsemble.from_members([members(1)[0], other])


def test_members_trained_with_different_seeds_make_one_ensemble():
    import dataclasses

    models = members(2)
    models[1].config = dataclasses.replace(CONFIG, training=dataclasses.replace(CONFIG.training, seed=7))
    assert len(MerEnsemble.from_members(models).members) == 2
