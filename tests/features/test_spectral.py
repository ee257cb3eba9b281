"""One STFT per piece for the chromagram and the MFCCs, computed block by block from audio decoded block by block:
librosa's values exactly for a piece of one block, within a stated tolerance when split (block-wise vs whole)."""
from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile

from mer.config import FeatureConfig
from mer.features import DecodedAudio, decode_audio, extract_features, open_audio, read_midi, render_audio
from mer.features.librosa_kernels import LOCK_PATH
from mer.features.spectral import power_blocks, spectral_features, tuning_candidates

CONFIG = FeatureConfig()
SR, HOP = CONFIG.sample_rate, CONFIG.hop_length
CLIP = "Q1_0vLPYiPN7qY_0"
CHROMA_TOLERANCE = 2e-6  # block-wise vs whole-file, absolute (chroma frames are max-normalised to 1)
MFCC_TOLERANCE = 2e-5  # block-wise vs whole-file, absolute (coefficients of tens to hundreds)


@pytest.fixture(scope="module")
def clip(emopia: Path) -> np.ndarray:
    """A real EMOPIA clip rendered (about 20 s)."""
    midi = read_midi((emopia / "midis" / f"{CLIP}.mid").read_bytes(), name=CLIP)
    return render_audio(midi, config=CONFIG, name=CLIP)


def librosa_features(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    chroma = librosa.feature.chroma_stft(y=audio, sr=SR, n_fft=CONFIG.n_fft, hop_length=HOP)
    mfcc = librosa.feature.mfcc(y=audio, sr=SR, n_mfcc=CONFIG.n_mfcc, n_mels=CONFIG.n_mels, n_fft=CONFIG.n_fft,
                                hop_length=HOP)
    return chroma, mfcc


def stereo_wav_44k(audio: np.ndarray) -> bytes:
    """A recording as it would arrive: 44.1 kHz stereo 16-bit WAV (the channels differ)."""
    wide = librosa.resample(audio, orig_sr=SR, target_sr=44_100)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([wide, 0.6 * wide], axis=1), 44_100, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_one_stft_gives_librosas_chromagram_and_mfccs_exactly(clip: np.ndarray, monkeypatch) -> None:
    calls = []
    stft = librosa.stft
    monkeypatch.setattr(librosa, "stft", lambda *a, **k: calls.append(1) or stft(*a, **k))
    chroma, mfcc = spectral_features(DecodedAudio.from_waveform(clip, sample_rate=SR), config=CONFIG)
    assert len(calls) == 1  # shared by both features
    expected_chroma, expected_mfcc = librosa_features(clip)
    np.testing.assert_array_equal(chroma, expected_chroma.astype(np.float32))
    np.testing.assert_array_equal(mfcc, expected_mfcc.astype(np.float32))


def piptrack_peaks(power: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    pitch, magnitude = librosa.piptrack(S=power, sr=SR, n_fft=CONFIG.n_fft, **kwargs)
    return pitch[pitch > 0], magnitude[pitch > 0]


@pytest.mark.parametrize("clip_name", [CLIP, "Q2_-jJVb0xvbdg_1", "Q3_02t1bj7ZABY_2", "Q4_0c2dTJTDUR4_1"])
def test_tuning_candidates_are_piptracks_peaks_bit_for_bit_on_emopia(clip_name: str, emopia: Path) -> None:
    midi_path = emopia / "midis" / f"{clip_name}.mid"
    audio = render_audio(read_midi(midi_path.read_bytes(), name=clip_name), config=CONFIG, name=clip_name)
    power = np.abs(librosa.stft(audio, n_fft=CONFIG.n_fft, hop_length=HOP)) ** 2
    pitch, magnitude = tuning_candidates(power, sr=SR, n_fft=CONFIG.n_fft)
    expected_pitch, expected_magnitude = piptrack_peaks(power)
    assert pitch.size > 1000  # a piano piece has peaks to count
    np.testing.assert_array_equal(pitch, expected_pitch)
    np.testing.assert_array_equal(magnitude, expected_magnitude)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("fmin", "fmax"), [(150.0, 4000.0), (0.0, 4000.0), (150.0, 20_000.0), (3000.0, 3100.0)])
def test_tuning_candidates_match_piptrack_on_any_spectrogram(seed: int, fmin: float, fmax: float) -> None:
    rng = np.random.default_rng(seed)
    power = (rng.random((1 + CONFIG.n_fft // 2, 60), dtype=np.float32) ** 6).astype(np.float32)
    power[:, 5] = 0.0  # a silent frame
    power[:, 9] = 1.0  # a flat one: ties everywhere
    power[100:103, 20] = 7.0  # a plateau
    pitch, magnitude = tuning_candidates(power, sr=SR, n_fft=CONFIG.n_fft, fmin=fmin, fmax=fmax)
    expected_pitch, expected_magnitude = piptrack_peaks(power, fmin=fmin, fmax=fmax)
    np.testing.assert_array_equal(pitch, expected_pitch)
    np.testing.assert_array_equal(magnitude, expected_magnitude)


@pytest.mark.parametrize("samples", [SR // 2, 3 * SR + 7, 10 * SR])
@pytest.mark.parametrize("frames_per_block", [37, 256])
def test_power_blocks_are_librosas_frames_in_any_blocks(samples: int, frames_per_block: int,
                                                        rng: np.random.Generator) -> None:
    audio = rng.standard_normal(samples).astype(np.float32)
    blocks = (audio[i:i + 5_000] for i in range(0, samples, 5_000))  # audio blocks unaligned with the frames
    power = np.concatenate(list(power_blocks(blocks, config=CONFIG, frames_per_block=frames_per_block)), axis=1)
    expected = np.abs(librosa.stft(audio, n_fft=CONFIG.n_fft, hop_length=HOP)) ** 2
    assert power.shape == expected.shape == (1 + CONFIG.n_fft // 2, 1 + samples // HOP)
    np.testing.assert_array_equal(power, expected)


def test_block_wise_features_of_a_decoded_file_match_whole_file_features(clip: np.ndarray) -> None:
    data = stereo_wav_44k(clip)
    whole = decode_audio(data, name=CLIP, config=CONFIG)
    streamed = open_audio(io.BytesIO(data), name=CLIP, config=CONFIG, resident_samples=SR)  # held: at most 1 s
    assert not streamed.resident and streamed.samples == whole.shape[0]
    np.testing.assert_array_equal(streamed.waveform(), whole)  # decoding in blocks changes no sample

    chroma, mfcc = spectral_features(streamed, config=CONFIG, frames_per_block=128)  # 30 blocks, two passes
    expected_chroma, expected_mfcc = librosa_features(whole)
    np.testing.assert_allclose(chroma, expected_chroma, rtol=0, atol=CHROMA_TOLERANCE)
    np.testing.assert_allclose(mfcc, expected_mfcc, rtol=0, atol=MFCC_TOLERANCE)

    # And the windows the model reads, from the file decoded block by block vs the whole waveform.
    config = FeatureConfig(window_seconds=5.0, hop_seconds=5.0)
    blockwise = extract_features(name=CLIP, midi=None, audio=open_audio(io.BytesIO(data), name=CLIP, config=config,
                                                                         resident_samples=SR), config=config)
    at_once = extract_features(name=CLIP, midi=None, audio=whole, config=config)
    np.testing.assert_array_equal(blockwise.window_starts, at_once.window_starts)
    np.testing.assert_allclose(blockwise.chroma, at_once.chroma, rtol=0, atol=CHROMA_TOLERANCE)
    np.testing.assert_allclose(blockwise.mfcc, at_once.mfcc, rtol=0, atol=MFCC_TOLERANCE)


@pytest.mark.parametrize(("format", "subtype"), [("FLAC", "PCM_16"), ("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS")])
def test_every_format_decodes_the_same_in_blocks(format: str, subtype: str, clip: np.ndarray) -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([clip, clip], axis=1), 48_000, format=format, subtype=subtype)
    data = buffer.getvalue()
    streamed = open_audio(io.BytesIO(data), name=CLIP, config=CONFIG, resident_samples=SR)
    assert not streamed.resident
    np.testing.assert_array_equal(streamed.waveform(), decode_audio(data, name=CLIP, config=CONFIG))


CHROMA_IN_A_FRESH_PROCESS = """
import sys, time
from pathlib import Path
import numpy as np
from mer.config import FeatureConfig
from mer.features import chromagram
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():  # every worker starts computing at the same instant
    time.sleep(0.01)
t = np.arange(22050 * 3) / 22050
print(chromagram(np.sin(2 * np.pi * 440 * t).astype(np.float32), config=FeatureConfig()).argmax(axis=0)[40])
"""


@pytest.mark.parametrize("attempt", [1, 2])
def test_feature_workers_starting_together_on_an_empty_numba_cache_all_compute(tmp_path: Path, attempt: int) -> None:
    # Four processes compute features at the same instant on a fresh install (an empty numba cache), then a fifth
    # loads what they cached. librosa's cache written by two processes at once made every later process segfault
    # in piptrack.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    go = tmp_path / "go"

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CHROMA_IN_A_FRESH_PROCESS, str(tmp_path / name), str(go)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    workers = [start(f"ready-{i}") for i in range(4)]
    while not all((tmp_path / f"ready-{i}").exists() for i in range(4)):
        assert all(w.poll() is None for w in workers), "a worker died before it was ready"
        time.sleep(0.05)
    go.touch()
    results = [worker.communicate(timeout=600) for worker in workers]
    later = start("ready-later")
    results.append(later.communicate(timeout=600))
    for worker, (out, err) in zip([*workers, later], results, strict=True):
        assert worker.returncode == 0, err[-2000:]
        assert out.split()[-1] == "9"  # an A (440 Hz) is pitch class 9 (pyfluidsynth may print a line before)


def test_once_the_cache_is_complete_a_worker_does_not_wait_for_the_compile_lock(tmp_path: Path) -> None:
    # The first worker compiles under the lock and marks the cache complete; after that, a worker computes
    # features while another process holds the lock (before the marker it would wait for it).
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    go = tmp_path / "go"
    go.touch()

    def worker(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CHROMA_IN_A_FRESH_PROCESS, str(tmp_path / name), str(go)],
                              env=env, capture_output=True, text=True, timeout=300)

    first = worker("ready-first")
    assert first.returncode == 0, first.stderr[-2000:]
    assert list((tmp_path / "numba-cache").glob("mer-kernels-cached-*")), "the first worker left no marker"
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held by "another process" for as long as the second worker runs
        try:
            second = worker("ready-second")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split()[-1] == "9"


def test_a_process_holding_the_compile_lock_can_import_librosa_under_it() -> None:
    # spectral_features takes the lock for its first call and imports librosa inside it: a lock that is not
    # re-entrant within a process hangs there forever.
    code = ("from mer.features.librosa_kernels import compile_lock, load_librosa\n"
            "with compile_lock():\n    with compile_lock():\n        print(load_librosa().__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "librosa"
