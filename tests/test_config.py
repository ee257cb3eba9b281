"""Named configurations: the paper's sizes stay reachable, and every preset round-trips through its JSON."""
from __future__ import annotations

import pytest

import dataclasses

from mer.config import PRESETS, MerConfig, ModelConfig, TrainConfig, preset


def test_the_paper_preset_builds_exactly_the_papers_sizes():
    config = preset("paper")
    # Sec. III-A: two stacked Bi-GRU layers of 256 units; III-C: 23 mel bands; III-D: 4 heads.
    assert (config.model.gru_layers, config.model.gru_hidden) == (2, 256)
    assert config.model.attention_heads == 4 and config.model.use_attention
    assert config.model.branches == ("symbolic", "harmony", "tone")
    assert config.features.n_mels == 23
    assert not config.model.summary_film and config.model.symbolic_pooling == "mean"
    assert config.training.transpose_semitones == 0


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_survives_its_saved_json(name):
    config = preset(name)
    assert MerConfig.from_json(config.to_json()) == config


def test_an_unknown_preset_is_refused_by_name():
    with pytest.raises(ValueError, match="nope"):
        preset("nope")


@pytest.mark.parametrize("changes, reason", [
    (dict(fit_on="train+val", temperature=1.2), "the epoch cannot be chosen"),  # best_val would read val
    (dict(fit_on="train+val", checkpoint="last"), "temperature cannot be fitted"),
    (dict(checkpoint="best"), "checkpoint must be"),
    (dict(fit_on="val"), "fit_on must be"),
    (dict(summary_c=0.0), "summary_c must be > 0"),
    (dict(summary_blend=1.5), "summary_blend must be in"),
    (dict(temperature=-1.0), "temperature must be > 0"),
])
def test_a_refit_that_would_choose_anything_on_val_is_refused(changes, reason):
    with pytest.raises(ValueError, match=reason):
        TrainConfig(**changes)


@pytest.mark.parametrize("changes, reason", [
    (dict(summary_kernel_centres=-1), "summary_kernel_centres must be >= 0"),
    (dict(summary_kernel_centres=100), "it needs summary_head=True"),
])
def test_a_kernel_head_without_a_head_or_with_negative_centres_is_refused(changes, reason):
    with pytest.raises(ValueError, match=reason):
        ModelConfig(**changes)


def test_a_refit_configuration_survives_its_saved_json():
    config = preset("default")
    config = dataclasses.replace(config, training=dataclasses.replace(
        config.training, checkpoint="last", fit_on="train+val", summary_c=0.1, summary_blend=0.4, temperature=1.3))
    assert MerConfig.from_json(config.to_json()) == config
