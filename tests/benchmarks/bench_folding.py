"""Benchmark: BatchNorm folded into the convolutions (mer.model.folding), A/B in one run — windows per second of
int8 CPU inference with and without folding, and how far the outputs move.

    .venv/bin/python tests/benchmarks/bench_folding.py [--clips 86] [--rounds 3]
        [--out tests/benchmarks/results/folding.json]

The windows of EMOPIA's first ``--clips`` test clips (audio rendered from the MIDI with FluidSynth), batches of 16
sorted by token length (as an inference actor runs them), one thread, int8 weights (what a CPU actor runs), for
the paper's and the default configuration's model sizes (untrained, with BatchNorm statistics drawn at random as a
trained model has them: the weights do not change the cost). Unfolded then folded, ``--rounds`` times; the
medians are reported. Prints one JSON object. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emit import emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared tiny helpers
from tiny import trained_like  # noqa: E402


def window_batches(clips: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The test clips' windows (default features) and their batches of 16, sorted by token length."""
    from mer.config import preset
    from mer.tagging.predictor import length_buckets
    from mer.train.dataset import clip_features, stack_rows
    from mer.train.emopia import emopia_root, load_split

    config = preset("default").features
    items = [clip_features(c.name, c.midi_path.read_bytes(), config=config)
             for c in load_split(emopia_root(), "test")[:clips]]
    windows = stack_rows([row for item in items for row in item.window_rows()])
    rows = np.arange(len(windows["token_lengths"]))
    return windows, length_buckets(windows["token_lengths"], rows, 16)


def inference_bench_args(doc: str) -> argparse.Namespace:
    """The flags of a CPU inference A/B over EMOPIA's test windows: ``--clips``, ``--rounds``, ``--out``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=86)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def main() -> int:
    args = inference_bench_args(__doc__)

    from mer.config import preset
    from mer.model import MerModel, fold_for_inference, predict_windows, quantize_int8

    torch.set_num_threads(1)  # as an inference actor runs
    windows, batches = window_batches(args.clips)
    result: dict = {"clips": args.clips, "windows": int(len(windows["token_lengths"])), "batch_size": 16,
                    "torch_threads": 1, "int8": True, "presets": {}}

    def run(model: nn.Module) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        probs = [predict_windows(model, {k: v[rows] for k, v in windows.items()}, device="cpu")["quadrant_probs"]
                 for rows in batches]
        return result["windows"] / (time.perf_counter() - start), np.concatenate(probs)

    for name in ("paper", "default"):
        torch.manual_seed(0)
        model = trained_like(MerModel(preset(name)))
        sides = {"unfolded": quantize_int8(model), "folded": quantize_int8(fold_for_inference(model))}
        rounds: dict[str, list[float]] = {side: [] for side in sides}
        probs = {}
        for _ in range(args.rounds):
            for side, runnable in sides.items():
                speed, probs[side] = run(runnable)
                rounds[side].append(round(speed, 2))
        median = {side: round(statistics.median(v), 2) for side, v in rounds.items()}
        result["presets"][name] = {
            "windows_per_second": median, "rounds": rounds,
            "speedup": round(median["folded"] / median["unfolded"], 3),
            "max_quadrant_prob_change": float(np.abs(probs["folded"] - probs["unfolded"]).max()),
        }
        print(f"{name}: {median}", file=sys.stderr)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
