"""Prediction: the model on window batches, windows merged into pieces, per-clip accuracies as the paper scores them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mer.config import MerConfig
from mer.model import MerModel
from mer.model.inference import EmotionPredictor, predict_windows
from mer.model.pieces import aggregate_windows
from mer.train.scores import clip_quadrants, split_metrics
from tiny import tiny_config as tiny


def tiny_config(**model) -> MerConfig:
    """A model small enough to run in milliseconds, on 2-second windows."""
    return tiny(window_seconds=2.0, max_tokens=32, resnet_blocks=2, **model)

def random_batch(config: MerConfig, rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """Window rows of two made-up pieces, as a numpy batch with the row key ``token_length``."""
    features = config.features
    frames = features.frames_per_window
    return {
        "name": np.array([f"piece{i % 2}" for i in range(size)]),
        "window_index": np.arange(size) // 2,
        "window_start": (np.arange(size) // 2) * features.hop_seconds,
        "tokens": rng.integers(0, features.vocab_size - 1, (size, features.max_tokens)),
        "token_length": rng.integers(1, features.max_tokens + 1, size),
        "chroma": rng.random((size, 12, frames), dtype=np.float32),
        "mfcc": rng.standard_normal((size, features.n_mfcc, frames), dtype=np.float32),
        "present": np.ones((size, 3), dtype=bool),
    }


def test_predict_windows_gives_probabilities_and_keeps_the_rows(rng: np.random.Generator) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    model = MerModel(config)
    batch = random_batch(config, rng, 6)

    out = predict_windows(model, batch, device="cpu")

    assert out["quadrant_probs"].shape == (6, 4)
    np.testing.assert_allclose(out["quadrant_probs"].sum(axis=1), 1.0, rtol=1e-5)
    for key in ("quadrant_probs", "arousal_prob", "valence_prob"):
        assert np.all((out[key] >= 0) & (out[key] <= 1)), key
    assert out["arousal_prob"].shape == out["valence_prob"].shape == (6,)
    assert out["attention"].shape == (6, 2, 3, 3)
    np.testing.assert_allclose(out["attention"].sum(axis=-1), 1.0, rtol=1e-5)  # all branches present
    assert list(out["name"]) == list(batch["name"])  # pass-through rows untouched
    assert not model.training


def test_predict_windows_without_attention_reports_zero_weights(rng: np.random.Generator) -> None:
    config = tiny_config(use_attention=False)
    out = predict_windows(MerModel(config), random_batch(config, rng, 3), device="cpu")
    assert out["attention"].shape == (3, 2, 3, 3)
    assert not out["attention"].any()


def test_predict_windows_names_missing_inputs(rng: np.random.Generator) -> None:
    config = tiny_config()
    batch = random_batch(config, rng, 2)
    del batch["chroma"]
    with pytest.raises(KeyError, match="chroma"):
        predict_windows(MerModel(config), batch, device="cpu")


def test_emotion_predictor_drops_feature_arrays(rng: np.random.Generator) -> None:
    from mer.model.artifact import Artifact

    config = tiny_config()
    artifact = Artifact(model=MerModel(config).eval(), config=config, meta={"version": "v"}, url="memory")
    predictor = EmotionPredictor.from_artifact(artifact, device="cpu")
    out = predictor(random_batch(config, rng, 4))
    assert {"tokens", "chroma", "mfcc"}.isdisjoint(out)
    assert out["quadrant_probs"].shape == (4, 4)
    assert list(out["window_index"]) == [0, 0, 1, 1]


@pytest.mark.parametrize("int8", [False, True])
def test_a_predictor_loading_its_own_model_labels_as_one_given_the_model_and_leaves_a_callers_model_alone(
        rng: np.random.Generator, tmp_path, int8: bool) -> None:
    from mer.model.artifact import Artifact, save_artifact

    config = tiny_config()
    torch.manual_seed(0)
    model = MerModel(config).eval()
    version = save_artifact(model.state_dict(), config=config, storage=str(tmp_path), meta={})
    before = {name: value.clone() for name, value in model.state_dict().items()}
    given = EmotionPredictor.from_artifact(Artifact(model=model, config=config, meta={"version": version},
                                                    url="memory"), device="cpu", int8=int8)
    loaded = EmotionPredictor.from_artifact(version, storage=str(tmp_path), device="cpu", int8=int8)
    batch = random_batch(config, rng, 6)
    np.testing.assert_allclose(loaded(batch)["quadrant_probs"], given(batch)["quadrant_probs"], atol=1e-6)
    # The caller's model is still the float model it trained: not folded, not quantised.
    assert model.state_dict().keys() == before.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def window_predictions() -> dict[str, np.ndarray]:
    """Hand-made window outputs: piece "a" has 3 windows given out of order, piece "b" one window."""
    return {
        "name": np.array(["a", "b", "a", "a"]),
        "window_index": np.array([2, 0, 0, 1]),
        "window_start": np.array([60.0, 0.0, 0.0, 30.0]),
        "quadrant_probs": np.array([
            [0.1, 0.7, 0.1, 0.1],  # a, window 2
            [0.0, 0.0, 0.2, 0.8],  # b
            [0.6, 0.2, 0.1, 0.1],  # a, window 0
            [0.5, 0.3, 0.1, 0.1],  # a, window 1
        ], dtype=np.float32),
        "arousal_prob": np.array([0.9, 0.2, 0.6, 0.3], dtype=np.float32),
        "valence_prob": np.array([0.3, 0.7, 0.9, 0.6], dtype=np.float32),
        "attention": np.stack([np.full((2, 3, 3), v, dtype=np.float32) for v in (0.1, 0.5, 0.3, 0.2)]),
    }


def test_a_piece_is_the_mean_of_its_windows() -> None:
    pieces = aggregate_windows(window_predictions())

    assert [p.name for p in pieces] == ["a", "b"]  # order of first appearance
    a, b = pieces
    np.testing.assert_allclose(a.quadrant_probs, [0.4, 0.4, 0.1, 0.1], atol=1e-6)
    # Mean Q1 = mean Q2 = 0.4: argmax takes the first, Q1 -> high arousal, positive valence.
    assert (a.quadrant, a.label, a.arousal, a.valence) == (0, "Q1", 1, 1)
    assert a.arousal_prob == pytest.approx(0.6)
    assert a.valence_prob == pytest.approx(0.6)
    np.testing.assert_allclose(a.attention, np.full((2, 3, 3), 0.2), atol=1e-6)
    # The timeline is in time order, whatever order the windows came in.
    np.testing.assert_array_equal(a.window_starts, [0.0, 30.0, 60.0])
    np.testing.assert_allclose(a.window_quadrant_probs[:, 1], [0.2, 0.3, 0.7])
    np.testing.assert_allclose(a.window_arousal_probs, [0.6, 0.3, 0.9])
    assert (b.quadrant, b.arousal, b.valence) == (3, 0, 1)  # Q4: low arousal, positive valence

    timeline = a.to_dict()["timeline"]
    assert [w["quadrant"] for w in timeline] == ["Q1", "Q1", "Q2"]
    assert a.to_dict()["quadrant"] == "Q1"


def test_split_metrics_are_per_clip_and_derive_arousal_valence_from_the_quadrant() -> None:
    predictions = window_predictions()
    # a is truly Q2 (predicted Q1: wrong quadrant, right arousal, wrong valence); b truly Q4 (all right).
    quadrants = np.array([1, 3, 1, 1])
    clips, predicted, true = clip_quadrants(names=predictions["name"], quadrant_probs=predictions["quadrant_probs"],
                                            quadrants=quadrants)
    assert clips == ["a", "b"]
    assert list(predicted) == [0, 3] and list(true) == [1, 3]

    metrics = split_metrics(names=predictions["name"], quadrant_probs=predictions["quadrant_probs"],
                            quadrants=quadrants)

    # Per clip, not per window: a's three windows count once.
    assert metrics == {"4q": 0.5, "arousal": 1.0, "valence": 0.5}
