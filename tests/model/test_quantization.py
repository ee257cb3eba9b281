"""int8 CPU inference: close to float32 on real EMOPIA windows, and the float32 model is left as it was."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mer.config import preset
from mer.evaluation.paper import NOTE_STEPS
from mer.model import EmotionPredictor, MerEnsemble, MerModel, predict_windows, quantize_int8
from mer.model.artifact import Artifact
from mer.train.dataset import clip_features, stack_rows
from tiny import assert_untouched, state_of

PROBABILITY_TOLERANCE = 0.05  # int8 weights move a window's probabilities by a few thousandths on EMOPIA


@pytest.fixture(scope="module")
def emopia_windows(emopia: Path) -> dict[str, np.ndarray]:
    """The windows of two real EMOPIA clips (a calm and a lively one), with the default configuration's features."""
    config = preset("default").features
    items = [clip_features(path.stem, path.read_bytes(), config=config)
             for path in (sorted((emopia / "midis").glob("Q3_*.mid"))[0],
                          sorted((emopia / "midis").glob("Q1_*.mid"))[0])]
    return stack_rows([row for item in items for row in item.window_rows()])


def notes_config():
    """The default with its Bi-GRU over notes (mer.model.notes): embeddings stay float, the GRU goes int8."""
    default = preset("default")
    return dataclasses.replace(default, model=dataclasses.replace(default.model, **dict(NOTE_STEPS)))


@pytest.mark.parametrize("name", ["default", "paper", "notes"])
def test_int8_probabilities_stay_close_to_float32_and_the_float_model_is_untouched(
        name: str, emopia_windows: dict[str, np.ndarray]) -> None:
    torch.manual_seed(0)
    model = MerModel(notes_config() if name == "notes" else preset(name)).eval()
    temperature = model.quadrant_temperature = 0.8  # a calibrated model's temperature travels with its int8 copy
    float32 = state_of(model)
    before = predict_windows(model, emopia_windows, device="cpu")

    int8 = predict_windows(quantize_int8(model), emopia_windows, device="cpu")

    assert_untouched(model, float32)  # quantising made a copy
    for key in ("quadrant_probs", "arousal_prob", "valence_prob", "attention"):
        np.testing.assert_allclose(int8[key], before[key], atol=PROBABILITY_TOLERANCE, err_msg=key)
    np.testing.assert_allclose(int8["quadrant_probs"].sum(axis=1), 1.0, rtol=1e-5)
    # The copy is another model: int8 moved the probabilities, and the temperature still sharpens them alike
    # (softmax(z / T) ** T is proportional to softmax(z): the float model's untempered probabilities).
    assert not np.array_equal(int8["quadrant_probs"], before["quadrant_probs"])
    untempered = before["quadrant_probs"] ** temperature
    untempered /= untempered.sum(axis=1, keepdims=True)
    assert np.all(int8["quadrant_probs"].max(axis=1) > untempered.max(axis=1) - PROBABILITY_TOLERANCE)


def test_the_predictor_runs_int8_on_a_cpu_and_an_ensemble_too(emopia_windows: dict[str, np.ndarray]) -> None:
    config = preset("default")
    torch.manual_seed(1)
    ensemble = MerEnsemble(config, members=2).eval()
    artifact = Artifact(model=ensemble, config=config, meta={"version": "v"}, url="memory")

    exact = EmotionPredictor.from_artifact(artifact, device="cpu")
    int8 = EmotionPredictor.from_artifact(artifact, device="cpu", int8=True)

    assert (exact.int8, int8.int8) == (False, True)
    np.testing.assert_allclose(int8(emopia_windows)["quadrant_probs"], exact(emopia_windows)["quadrant_probs"],
                               atol=PROBABILITY_TOLERANCE)


def test_an_int8_window_barely_depends_on_its_batch_mates(emopia_windows: dict[str, np.ndarray]) -> None:
    # int8 activations are scaled per batch, so a window's output moves a little with the windows beside it
    # (float32 outputs do not); the tagger's batches differ from run to run, so this bounds a re-run's change.
    torch.manual_seed(2)
    model = quantize_int8(MerModel(preset("default")).eval())
    together = predict_windows(model, emopia_windows, device="cpu")["quadrant_probs"]
    for row in range(len(emopia_windows["name"])):
        alone = predict_windows(model, {k: v[row:row + 1] for k, v in emopia_windows.items()}, device="cpu")
        np.testing.assert_allclose(alone["quadrant_probs"][0], together[row], atol=PROBABILITY_TOLERANCE / 5)
