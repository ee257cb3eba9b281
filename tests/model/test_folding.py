"""Folding BatchNorm into the convolutions (and the harmony CNN in channels-last order) changes no output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mer.config import preset
from mer.model import EmotionPredictor, MerEnsemble, MerModel, fold_for_inference, predict_windows
from mer.model.artifact import Artifact
from mer.train.dataset import clip_features, stack_rows
from tiny import assert_untouched, state_of, trained_like

TOLERANCE = 1e-4  # float rounding: a folded weight is the product of a conv weight and a BN scale


@pytest.fixture(scope="module")
def emopia_windows(emopia: Path) -> dict[str, np.ndarray]:
    config = preset("default").features
    items = [clip_features(path.stem, path.read_bytes(), config=config)
             for path in (sorted((emopia / "midis").glob("Q2_*.mid"))[0],
                          sorted((emopia / "midis").glob("Q4_*.mid"))[0])]
    return stack_rows([row for item in items for row in item.window_rows()])


@pytest.mark.parametrize("name", ["default", "paper"])
def test_a_folded_model_gives_the_same_outputs_and_the_original_is_untouched(
        name: str, emopia_windows: dict[str, np.ndarray]) -> None:
    torch.manual_seed(0)
    model = trained_like(MerModel(preset(name)), seed=1)
    model.quadrant_temperature = 0.7
    unfolded = state_of(model)
    before = predict_windows(model, emopia_windows, device="cpu")

    folded = fold_for_inference(model)
    out = predict_windows(folded, emopia_windows, device="cpu")

    for key in ("quadrant_probs", "arousal_prob", "valence_prob", "attention"):
        np.testing.assert_allclose(out[key], before[key], atol=TOLERANCE, err_msg=key)
    assert not any(isinstance(m, nn.modules.batchnorm.BatchNorm2d) for m in folded.encoders.modules()
                   if m is not folded.encoders["harmony"].input_bn and m is not folded.encoders["tone"].input_bn), \
        "every conv block's BatchNorm is folded away"
    assert folded.quadrant_temperature == 0.7
    assert_untouched(model, unfolded)  # folding made a copy


def test_an_ensemble_folds_member_by_member(emopia_windows: dict[str, np.ndarray]) -> None:
    torch.manual_seed(0)
    ensemble = trained_like(MerEnsemble(preset("default"), members=2), seed=2)
    before = predict_windows(ensemble, emopia_windows, device="cpu")
    out = predict_windows(fold_for_inference(ensemble), emopia_windows, device="cpu")
    np.testing.assert_allclose(out["quadrant_probs"], before["quadrant_probs"], atol=TOLERANCE)


def test_the_predictor_folds_unless_told_not_to(emopia_windows: dict[str, np.ndarray]) -> None:
    torch.manual_seed(0)
    config = preset("default")
    artifact = Artifact(model=trained_like(MerModel(config), seed=3), config=config, meta={}, url="memory")
    folded, as_trained = EmotionPredictor(artifact), EmotionPredictor(artifact, fold=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in as_trained.model.encoders["tone"].blocks.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.encoders["tone"].blocks.modules())
    np.testing.assert_allclose(folded(dict(emopia_windows))["quadrant_probs"],
                               as_trained(dict(emopia_windows))["quadrant_probs"], atol=TOLERANCE)
