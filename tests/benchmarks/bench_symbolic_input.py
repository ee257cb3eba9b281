"""Benchmark: the Bi-GRU over a window's notes (``symbolic_input="notes"``, every note of the window) against the
default's Bi-GRU over its first 512 tokens, A/B in one run — windows per second of CPU inference as a tagging
actor runs it (int8, BatchNorm folded, one thread, batches of 16 sorted by token length), MIDI alone and fused.

    .venv/bin/python tests/benchmarks/bench_symbolic_input.py [--clips 86] [--rounds 3]
        [--out tests/benchmarks/results/symbolic_input.json]

The windows of EMOPIA's first ``--clips`` test clips (default features; audio rendered from the MIDI with
FluidSynth). Untrained models with BatchNorm statistics drawn as a trained model has them (the weights do not
change the cost). The two forms alternate within each round; medians over ``--rounds``. Also reports the Bi-GRU's
steps per window under each form. Prints one JSON object. Not collected by pytest.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emit import emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared tiny helpers
from bench_folding import inference_bench_args, window_batches  # noqa: E402
from tiny import trained_like  # noqa: E402


def main() -> int:
    args = inference_bench_args(__doc__)

    from mer.config import preset
    from mer.evaluation.paper import NOTE_STEPS
    from mer.model import MerModel, fold_for_inference, predict_windows, quantize_int8
    from mer.model.notes import note_steps

    torch.set_num_threads(1)  # as an inference actor runs
    windows, batches = window_batches(args.clips)
    default = preset("default")
    tokens = torch.from_numpy(windows["tokens"].astype(np.int64))
    lengths = torch.from_numpy(windows["token_lengths"].astype(np.int64))
    notes = note_steps(tokens, lengths, config=default.features).counts.numpy()
    result: dict = {
        "clips": args.clips, "windows": int(len(lengths)), "batch_size": 16, "torch_threads": 1, "int8": True,
        "folded": True,
        "steps_per_window": {"tokens": float(np.minimum(lengths.numpy(), default.model.symbolic_max_tokens).mean()),
                             "notes": float(notes.mean())},
        "models": {},
    }

    def run(model: torch.nn.Module) -> float:
        start = time.perf_counter()
        for rows in batches:
            predict_windows(model, {k: v[rows] for k, v in windows.items()}, device="cpu")
        return result["windows"] / (time.perf_counter() - start)

    for branches in (("symbolic",), default.model.branches):
        forms = {
            "tokens": dataclasses.replace(default.model, branches=branches),
            "notes": dataclasses.replace(default.model, branches=branches, **dict(NOTE_STEPS)),
        }
        sides = {}
        for form, model_config in forms.items():
            torch.manual_seed(0)
            model = trained_like(MerModel(dataclasses.replace(default, model=model_config)))
            sides[form] = quantize_int8(fold_for_inference(model))
        rounds: dict[str, list[float]] = {form: [] for form in sides}
        for _ in range(args.rounds):
            for form, runnable in sides.items():
                rounds[form].append(round(run(runnable), 2))
        median = {form: round(statistics.median(v), 2) for form, v in rounds.items()}
        name = "midi_only" if branches == ("symbolic",) else "fused"
        result["models"][name] = {"windows_per_second": median, "rounds": rounds,
                                  "notes_over_tokens": round(median["notes"] / median["tokens"], 3)}
        print(f"{name}: {median}", file=sys.stderr)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
