"""The frozen musicnn (mer.model.musicnn): the original model's outputs, and tags that fit a piano."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import torch

from mer.config import FeatureConfig
from mer.features import MSD_TAGS, render_audio, window_patches
from mer.features.musicnn import log_mel, patches
from mer.model import musicnn, window_embeddings

REFERENCE = Path(__file__).with_name("data") / "musicnn_reference.npz"  # infra/convert_musicnn.py, TensorFlow


def test_the_port_gives_the_original_tensorflow_models_embedding_and_tags() -> None:
    with np.load(REFERENCE) as reference:
        embedding, tags = musicnn()(torch.from_numpy(reference["patches"]))
        np.testing.assert_allclose(embedding.numpy(), reference["embedding"], atol=2e-4)
        np.testing.assert_allclose(tags.numpy(), reference["tags"], atol=2e-5)


def test_a_piano_rendering_is_tagged_instrumental_above_any_voice() -> None:
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    for i, root in enumerate([60, 65, 67, 60] * 2):  # I-IV-V-I chords, one a second
        piano.notes += [pretty_midi.Note(80, root + step, i * 1.0, i * 1.0 + 0.9) for step in (0, 4, 7, -12)]
    midi.instruments.append(piano)
    config = FeatureConfig()
    audio = render_audio(midi, config=config, name="cadence")
    _, tags = musicnn()(torch.from_numpy(patches(log_mel(audio, config.sample_rate))))
    mean = dict(zip(MSD_TAGS, tags.mean(dim=0).tolist()))
    voices = [t for t in MSD_TAGS if "vocal" in t]
    assert mean["instrumental"] > max(mean[t] for t in voices)


def test_a_windows_embedding_is_the_mean_of_its_patches() -> None:
    rng = np.random.default_rng(1)
    rate = 16_000
    audio = rng.normal(0.0, 0.1, 12 * rate).astype(np.float32)
    per_window = window_patches(audio, np.array([0.0, 6.0]), sample_rate=rate, window_seconds=6.0)
    embeddings = window_embeddings(per_window)
    assert embeddings.shape == (2, 200) and embeddings.dtype == np.float32
    for row, cut in zip(embeddings, per_window):
        np.testing.assert_allclose(row, musicnn()(torch.from_numpy(cut))[0].mean(dim=0).numpy(), atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])  # different audio, different embedding
