"""Named configurations: the paper's sizes stay reachable, and every preset round-trips through its JSON."""
from __future__ import annotations

import pytest

from mer.config import PRESETS, MerConfig, preset


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
