"""musicnn's input (mer.features.musicnn): log-mel at 16 kHz, 3-s patches, each window its own patches."""
from __future__ import annotations

import numpy as np
import pytest

from mer.features.musicnn import (N_MELS, PATCH_FRAMES, PATCHES_PER_WINDOW, SAMPLE_RATE, log_mel, patches,
                                   window_patches)
from mer.features.librosa_kernels import load_librosa

RATE = 22_050  # the project's audio rate: log_mel resamples


def tone(frequency: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.mark.parametrize("frequency", [220.0, 440.0, 1760.0])
def test_log_mel_puts_a_tone_in_its_mel_band_at_16_khz(frequency: float) -> None:
    mel = log_mel(tone(frequency, 2.0), RATE)
    assert mel.shape == (1 + 2 * SAMPLE_RATE // 256, N_MELS)  # resampled to 16 kHz, hop 256
    centres = load_librosa().mel_frequencies(n_mels=N_MELS + 2, fmax=SAMPLE_RATE / 2)[1:-1]
    loudest = int(np.argmax(mel[10:-10].mean(axis=0)))
    assert abs(loudest - int(np.argmin(np.abs(centres - frequency)))) <= 1
    assert log_mel(np.zeros(RATE, np.float32), RATE).max() == 0.0  # log10(1 + 0): silence is 0


def test_patches_are_consecutive_3_s_slices_and_a_short_window_is_padded() -> None:
    mel = np.random.default_rng(0).random((3 * PATCH_FRAMES + 50, N_MELS)).astype(np.float32)
    cut = patches(mel)
    assert cut.shape == (3, PATCH_FRAMES, N_MELS)
    for k in range(3):
        np.testing.assert_array_equal(cut[k], mel[k * PATCH_FRAMES:(k + 1) * PATCH_FRAMES])
    short = patches(mel[:40])
    assert short.shape == (1, PATCH_FRAMES, N_MELS)
    np.testing.assert_array_equal(short[0, :40], mel[:40])
    assert not short[0, 40:].any()


def test_each_window_reads_its_own_audio_and_a_window_past_the_end_is_silence() -> None:
    audio = np.concatenate([np.zeros(10 * RATE, np.float32), tone(440.0, 10.0)])  # 10 s silent, 10 s of A4
    first, second, past = window_patches(audio, np.array([0.0, 10.0, 30.0]), sample_rate=RATE, window_seconds=10.0)
    assert first.shape == second.shape == (3, PATCH_FRAMES, N_MELS)  # 10 s: three whole 3-s patches
    assert first.max() < 0.01 < second.mean(axis=(1, 2)).min()
    assert past.shape == (1, PATCH_FRAMES, N_MELS) and not past.any()


def test_a_long_window_is_embedded_from_a_few_patches_spread_over_it() -> None:
    rate = SAMPLE_RATE
    audio = np.concatenate([tone(220.0 * 2 ** (k / 12), 3.0, rate) for k in range(10)])  # a new pitch every patch
    (cut,) = window_patches(audio, np.array([0.0]), sample_rate=rate, window_seconds=30.0)
    everything = patches(log_mel(audio, rate))
    assert len(everything) >= PATCHES_PER_WINDOW + 2 and len(cut) == PATCHES_PER_WINDOW
    chosen = [next(k for k, p in enumerate(everything) if np.array_equal(p, c)) for c in cut]
    assert chosen[0] == 0 and chosen[-1] == len(everything) - 1 and chosen == sorted(set(chosen))
