"""Benchmark: int8 against float32 CPU inference, on trained models — labels kept, accuracy, windows per second.

    .venv/bin/python tests/benchmarks/bench_int8.py --models V1 V2 ... --storage DIR --cache-dir DIR
        [--splits val test] [--rounds 2] [--out tests/benchmarks/results/int8.json]

For each model version (an artifact in ``--storage``): its EMOPIA windows of each split from the feature cache
(extracted there when missing), scored with the float32 model and with :func:`mer.model.quantize_int8`'s copy of
it — the clips whose label changes, 4Q accuracy with each, and the largest change of a clip's quadrant probability
— then, one thread, the windows per second of each on the first split, A then B, ``--rounds`` times (the
median is reported). The same for an untrained model of the paper's sizes (``MerConfig()``: the model the tagging
benchmark times), speed only. Audio is rendered from the MIDI with FluidSynth. Prints one JSON object.
Not collected by pytest.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from emit import emit

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="model versions (or artifact paths)")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from mer.config import MerConfig
    from mer.evaluation import evaluate_features
    from mer.evaluation.robustness import windows_per_second
    from mer.features import FeatureCache
    from mer.model import Artifact, MerModel, load_artifact, quantize_int8
    from mer.train import emopia_root, ensure_ray, extract_clips, load_split, window_table

    torch.set_num_threads(1)  # as an inference actor runs: one thread per actor, one actor per core
    ensure_ray()
    cache = FeatureCache(os.path.abspath(args.cache_dir))
    root = emopia_root()

    def speeds(float_artifact: Artifact, int8_artifact: Artifact, table: dict) -> dict:
        rounds = {"float32": [], "int8": []}
        for _ in range(args.rounds):  # A then B, so both see the same machine
            rounds["float32"].append(windows_per_second(float_artifact, table))
            rounds["int8"].append(windows_per_second(int8_artifact, table))
        median = {k: round(statistics.median(v), 2) for k, v in rounds.items()}
        return {"windows_per_second": median, "rounds": {k: [round(x, 2) for x in v] for k, v in rounds.items()},
                "speedup": round(median["int8"] / median["float32"], 3)}

    models, tables = [], {}
    for version in args.models:
        artifact = load_artifact(version, storage=args.storage, device="cpu")
        quantized = dataclasses.replace(artifact, model=quantize_int8(artifact.model))
        row = {"version": artifact.version, "seed": artifact.meta.get("seed"),
               "branches": list(artifact.config.model.branches), "splits": {}}
        for split in args.splits:
            items = extract_clips(load_split(root, split), config=artifact.config.features, cache=cache,
                                  progress=False).clips
            tables.setdefault(split, window_table(items))
            exact, int8 = (evaluate_features(a, items, device="cpu") for a in (artifact, quantized))
            row["splits"][split] = {
                "clips": len(exact.names),
                "labels_changed": int((exact.pred != int8.pred).sum()),
                "accuracy_4q": {"float32": exact.metrics["4q"], "int8": int8.metrics["4q"]},
                "max_probability_change": round(float(np.abs(exact.probs - int8.probs).max()), 4),
            }
        row["speed"] = speeds(artifact, quantized, tables[args.splits[0]])
        print(row, file=sys.stderr, flush=True)
        models.append(row)

    paper = MerModel(MerConfig()).eval()  # untrained: the weights do not change the cost
    paper_artifact = Artifact(model=paper, config=MerConfig(), meta={"version": "untrained-paper"}, url="")
    paper_speed = speeds(paper_artifact, dataclasses.replace(paper_artifact, model=quantize_int8(paper)),
                         tables[args.splits[0]])
    changed = {s: sum(m["splits"][s]["labels_changed"] for m in models) for s in args.splits}
    clips = {s: sum(m["splits"][s]["clips"] for m in models) for s in args.splits}
    emit({
        "torch": torch.__version__, "threads": 1, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "note": "audio rendered from the MIDI with FluidSynth (TimGM6mb)",
        "models": models,
        "labels_changed": {s: f"{changed[s]} of {clips[s]} clips" for s in args.splits},
        "untrained_paper_model_speed": paper_speed,
        "window_count": {s: int(len(t["quadrant"])) for s, t in tables.items()},
    }, args.out)


if __name__ == "__main__":
    main()
