"""Benchmark: the tuning estimate's peaks, librosa's ``piptrack`` against ``tuning_candidates`` (the same peaks,
bit for bit), and a whole clip's ``spectral_features`` with each, on one thread. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_tuning.py [--clips 20] [--out tests/benchmarks/results/tuning.json]

Audio is rendered from EMOPIA's MIDI with FluidSynth (EMOPIA ships no audio here). A/B in one run: each clip is
timed both ways, alternately, best of three.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

import mer.features.spectral as spectral  # noqa: E402
from emit import emit  # noqa: E402
from mer.config import FeatureConfig  # noqa: E402
from mer.features import DecodedAudio, read_midi, render_audio  # noqa: E402
from mer.features.librosa_kernels import load_librosa  # noqa: E402
from mer.train import emopia_root, load_split  # noqa: E402


def piptrack_peaks(power: np.ndarray, *, sr: float, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """What spectral_features used before: librosa.piptrack over every bin, then its peaks."""
    pitch, magnitude = load_librosa().piptrack(S=power, sr=sr, n_fft=n_fft)
    return pitch[pitch > 0], magnitude[pitch > 0]


def best_of(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = FeatureConfig()
    clips = load_split(emopia_root(), "test")[: args.clips]
    new_peaks, old_peaks, new_clip, old_clip, identical, seconds = [], [], [], [], 0, 0.0
    candidates = spectral.tuning_candidates
    for clip in clips:
        audio = render_audio(read_midi(clip.midi_path.read_bytes(), name=clip.name), config=config, name=clip.name)
        seconds += audio.shape[0] / config.sample_rate
        power = np.abs(load_librosa().stft(audio, n_fft=config.n_fft, hop_length=config.hop_length)) ** 2
        a = candidates(power, sr=config.sample_rate, n_fft=config.n_fft)
        b = piptrack_peaks(power, sr=config.sample_rate, n_fft=config.n_fft)
        identical += int(all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)))
        new_peaks.append(best_of(lambda: candidates(power, sr=config.sample_rate, n_fft=config.n_fft)))
        old_peaks.append(best_of(lambda: piptrack_peaks(power, sr=config.sample_rate, n_fft=config.n_fft)))
        decoded = DecodedAudio.from_waveform(audio, sample_rate=config.sample_rate)
        new_clip.append(best_of(lambda: spectral.spectral_features(decoded, config=config)))
        spectral.tuning_candidates = piptrack_peaks  # the code before, in the same process
        try:
            old_clip.append(best_of(lambda: spectral.spectral_features(decoded, config=config)))
        finally:
            spectral.tuning_candidates = candidates
    emit({
        "benchmark": "tuning_candidates", "clips": len(clips), "threads": 1,
        "audio": "rendered from EMOPIA MIDI with FluidSynth (no EMOPIA recordings)",
        "audio_seconds_mean": round(seconds / len(clips), 1),
        "clips_with_identical_peaks": identical,
        "peaks_ms_per_clip": {"piptrack": round(1000 * float(np.mean(old_peaks)), 2),
                              "tuning_candidates": round(1000 * float(np.mean(new_peaks)), 2)},
        "spectral_features_ms_per_clip": {"with_piptrack": round(1000 * float(np.mean(old_clip)), 2),
                                          "with_tuning_candidates": round(1000 * float(np.mean(new_clip)), 2)},
        "peaks_speedup": round(float(np.mean(old_peaks)) / float(np.mean(new_peaks)), 2),
        "spectral_features_speedup": round(float(np.mean(old_clip)) / float(np.mean(new_clip)), 2),
    }, args.out)


if __name__ == "__main__":
    main()
