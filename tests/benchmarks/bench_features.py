"""Benchmark: feature extraction on one core and model inference on CPU, over EMOPIA clips. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_features.py [--clips 100] [--emopia PATH]

Each stage is timed separately per clip (render = FluidSynth, tokens = MIDI reading + pedal + tokens, chroma,
MFCC, summary = every window's key, note statistics and texture descriptors, of which ``texture`` is the part
:mod:`mer.features.texture` computes), then the model's inference on the resulting windows at the default config.
Audio is rendered from EMOPIA's MIDI (EMOPIA ships no audio here).
"""
from __future__ import annotations

import argparse
import json
import os
import time

# One core for feature extraction, as the issue asks: pin BLAS/numba threads before numpy/librosa load.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mer.config import MerConfig  # noqa: E402
from mer.features import (chromagram, extract_features, midi_like_tokens, mfcc, piano_notes,  # noqa: E402
                          read_midi, render_audio, summary_descriptors, window_starts)
from mer.features.extract import window_notes  # noqa: E402
from mer.features.texture import texture_descriptors  # noqa: E402
from mer.model import MerModel  # noqa: E402
from mer.train import emopia_root, load_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--emopia", default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    config = MerConfig()
    features = config.features
    root = emopia_root(args.emopia)
    clips = (load_split(root, "train") + load_split(root, "val") + load_split(root, "test"))[: args.clips]

    # Warm librosa/numba once so the first clip's JIT compile is not counted as feature time.
    warm = np.sin(np.linspace(0, 2000, features.sample_rate)).astype(np.float32)
    chromagram(warm, config=features), mfcc(warm, config=features)

    seconds = {"render": 0.0, "tokens": 0.0, "chroma": 0.0, "mfcc": 0.0, "assemble": 0.0}
    summary_seconds = {"summary": 0.0, "texture": 0.0}  # inside extract_features, so not added to the total
    audio_seconds = 0.0
    items = []
    for clip in clips:
        data = clip.midi_path.read_bytes()
        t0 = time.perf_counter()
        midi = read_midi(data, name=clip.name)
        midi_like_tokens(piano_notes(midi, config=features), config=features)
        t1 = time.perf_counter()
        audio = render_audio(midi, config=features, name=clip.name)
        t2 = time.perf_counter()
        chromagram(audio, config=features)
        t3 = time.perf_counter()
        mfcc(audio, config=features)
        t4 = time.perf_counter()
        items.append(extract_features(name=clip.name, midi=midi, audio=audio, config=features))
        t5 = time.perf_counter()
        seconds["tokens"] += t1 - t0
        seconds["render"] += t2 - t1
        seconds["chroma"] += t3 - t2
        seconds["mfcc"] += t4 - t3
        # extract_features recomputes tokens/chroma/MFCC; only its windowing and padding count as "assemble".
        seconds["assemble"] += max(0.0, (t5 - t4) - (t1 - t0) - (t3 - t2) - (t4 - t3))
        audio_seconds += len(audio) / features.sample_rate
        notes = piano_notes(midi, config=features)
        windows = [window_notes(notes, start, features.window_seconds)
                   for start in window_starts(midi.get_end_time(), config=features)]
        t6 = time.perf_counter()
        for window in windows:
            summary_descriptors(notes=window, chroma=None)
        t7 = time.perf_counter()
        for window in windows:
            texture_descriptors(window)
        summary_seconds["summary"] += t7 - t6
        summary_seconds["texture"] += time.perf_counter() - t7

    n = len(clips)
    feature_total = sum(seconds.values())

    # Model inference: every window of the clips, default config, eval mode, CPU (all cores torch wants).
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = MerModel(config).eval()
    rows = [row for item in items for row in item.window_rows()]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            model(
                torch.as_tensor(np.stack([r["tokens"] for r in batch])),
                torch.as_tensor(np.array([r["token_length"] for r in batch])),
                torch.as_tensor(np.stack([r["chroma"] for r in batch])),
                torch.as_tensor(np.stack([r["mfcc"] for r in batch])),
                torch.as_tensor(np.stack([r["present"] for r in batch])),
            )
    inference_seconds = time.perf_counter() - t0

    print(json.dumps({
        "benchmark": "features_and_inference",
        "clips": n,
        "audio": "rendered from EMOPIA MIDI with FluidSynth (no EMOPIA recordings)",
        "audio_seconds_total": round(audio_seconds, 1),
        "feature_threads": 1,
        "feature_seconds_per_clip": {k: round(v / n, 4) for k, v in seconds.items()},
        "feature_clips_per_second": {k: round(n / v, 2) if v else None for k, v in seconds.items()},
        "feature_clips_per_second_total": round(n / feature_total, 2),
        "summary_seconds_per_clip": {k: round(v / n, 4) for k, v in summary_seconds.items()},
        "inference_windows": len(rows),
        "inference_torch_threads": torch.get_num_threads(),
        "inference_batch_size": args.batch_size,
        "inference_clips_per_second": round(n / inference_seconds, 2),
        "inference_windows_per_second": round(len(rows) / inference_seconds, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
