"""The input of a pretrained audio embedding: musicnn's log-mel patches (Pons & Serra, 2019). Pure NumPy.

Not in the paper. EMOPIA's 767 training clips are few for learning what sounds sad from scratch; musicnn learnt
its 50 tags (among them "sad", "happy", "Mellow", "chill", "beautiful") from some 200,000 songs of the Million Song
Dataset. Its penultimate layer, averaged over a window's 3-second patches, is the embedding; the network itself
is a frozen torch module (mer.model.musicnn). Its weights (:data:`WEIGHTS`, converted from the ``musicnn``
package's TensorFlow checkpoint by ``infra/convert_musicnn.py``; ISC licence, ``data/MUSICNN_LICENSE``) live
here with the rest of what defines its input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mer.features.librosa_kernels import load_librosa

WEIGHTS = Path(__file__).with_name("data") / "msd_musicnn.npz"
SAMPLE_RATE = 16_000  # what musicnn was trained on
N_FFT, HOP, N_MELS = 512, 256, 96
PATCH_FRAMES = 187  # 3 s of frames: musicnn's input
EMBEDDING_SIZE = 200
PATCHES_PER_WINDOW = 4
"""At most this many of a window's 3-s patches, spread evenly over it, are embedded: each costs some 3 GFLOP, so a
30-s window costs four instead of ten (the mean over four patches spanning the window stands for the whole)."""
MSD_TAGS = ("rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
            "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul",
            "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies",
            "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop",
            "70s", "party", "country", "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal",
            "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy")
__all__ = ["EMBEDDING_SIZE", "MSD_TAGS", "PATCHES_PER_WINDOW", "SAMPLE_RATE", "WEIGHTS", "log_mel", "patches",
           "window_patches"]


def log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(samples,) mono at ``sample_rate`` -> musicnn's input, log10(1 + 10^4 mel power) (frames, 96) float32."""
    librosa = load_librosa()
    if sample_rate != SAMPLE_RATE:
        audio = librosa.resample(np.asarray(audio, dtype=np.float32), orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    mel = librosa.feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=SAMPLE_RATE, n_fft=N_FFT,
                                         hop_length=HOP, n_mels=N_MELS)  # (96, frames) power
    return np.log10(10_000.0 * mel.T + 1.0).astype(np.float32)  # (frames, 96)


def patches(mel: np.ndarray) -> np.ndarray:
    """(frames, 96) -> (P, 187, 96): consecutive 3-s patches, as musicnn's own extractor cuts them (a last
    partial patch is left out); a window under 3 s is padded with silence (0 after the log) to one patch."""
    if mel.shape[0] < PATCH_FRAMES:
        mel = np.concatenate([mel, np.zeros((PATCH_FRAMES - mel.shape[0], mel.shape[1]), mel.dtype)])
    starts = range(0, mel.shape[0] - PATCH_FRAMES + 1, PATCH_FRAMES)
    return np.stack([mel[s:s + PATCH_FRAMES] for s in starts])


def window_patches(audio: np.ndarray, starts: np.ndarray, *, sample_rate: int, window_seconds: float
                   ) -> list[np.ndarray]:
    """A piece's audio (samples,) and its windows' starts (W,) s -> each window's patches (P_w, 187, 96) float32,
    P_w <= :data:`PATCHES_PER_WINDOW` spread evenly over the window (a window past the audio's end is one patch of
    silence). mer.model.musicnn turns them into embeddings."""
    audio = np.asarray(audio, dtype=np.float32)
    mel = log_mel(audio, sample_rate)  # one resampling and STFT for the whole piece
    frames_per_second = SAMPLE_RATE / HOP
    length = int(round(window_seconds * frames_per_second))
    selected = []
    for start in np.asarray(starts, dtype=np.float64):
        cut = patches(mel[int(round(start * frames_per_second)):][:length])
        keep = np.unique(np.linspace(0, len(cut) - 1, min(len(cut), PATCHES_PER_WINDOW)).round().astype(int))
        selected.append(cut[keep])
    return selected
