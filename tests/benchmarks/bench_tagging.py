"""Benchmark: end-to-end items/s of the Ray Data tagger vs a plain sequential loop doing the same work.

    .venv/bin/python tests/benchmarks/bench_tagging.py [--items 200] [--cache-dir /tmp/mer-bench-tagging]

Both tag the same local-folder store of EMOPIA pairs (MIDI + a WAV rendered with FluidSynth; rendered once into
``--cache-dir`` and reused) into a fresh SQLite catalog, with the same model: the full-size model of the default
config (untrained — the weights do not change the cost). The pipeline is :func:`mer.tagging.tag_store` (feature
tasks + an inference actor on Ray Data); the loop is :func:`mer.tagging.tag_store_local` (the same functions,
item after item, one process, no Ray). Each is timed end to end — model loading, listing, reading, features,
inference, catalog writes, the pipeline's actor start-up included; starting the Ray cluster itself is not (a
nightly job joins a running cluster; ``ray_init_seconds`` reports it). Prints one JSON object with both rates and
their ratio. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path



def render_pair(args: tuple[str, str, str]) -> str:
    """Write ``<store>/<name>.mid`` and its rendering ``<name>.wav`` (16-bit PCM at the feature rate)."""
    import soundfile

    from mer.config import FeatureConfig
    from mer.features.midi import read_midi
    from mer.features.render import render_audio

    name, midi_path, store = args
    features = FeatureConfig()
    data = Path(midi_path).read_bytes()
    audio = render_audio(read_midi(data, name=name), config=features, name=name)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, features.sample_rate, format="WAV", subtype="PCM_16")
    (Path(store) / f"{name}.wav").write_bytes(buffer.getvalue())
    (Path(store) / f"{name}.mid").write_bytes(data)  # last: a pair with its .mid is complete
    return name


def build_store(cache: Path, items: int) -> Path:
    """A folder with ``items`` EMOPIA pairs (rendering only the ones not rendered before)."""
    from mer.train.emopia import emopia_root, load_split

    root = emopia_root()
    clips = sorted((c for split in ("train", "val", "test") for c in load_split(root, split)), key=lambda c: c.name)
    if items > len(clips):
        raise SystemExit(f"EMOPIA has {len(clips)} clips, fewer than --items {items}")
    store = cache / "store"
    store.mkdir(parents=True, exist_ok=True)
    chosen = clips[:: len(clips) // items][:items]  # spread over the quadrants (names start with Q1..Q4)
    missing = [(c.name, str(c.midi_path), str(store)) for c in chosen if not (store / f"{c.name}.mid").exists()]
    if missing:
        print(f"rendering {len(missing)} WAVs into {store} (once)...", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(render_pair, missing, chunksize=4))
    selected = cache / f"store-{items}"
    selected.mkdir(exist_ok=True)
    wanted = {f"{c.name}{ext}" for c in chosen for ext in (".mid", ".wav")}
    for path in selected.iterdir():
        if path.name not in wanted:
            path.unlink()
    for name in wanted:
        link = selected / name
        if not link.exists():
            os.link(store / name, link)  # a hard link: the store refuses symlinks that lead out of its root
    return selected


def build_model(cache: Path) -> str:
    """An untrained full-size model artifact (default MerConfig), made once."""
    import torch

    from mer.config import MerConfig
    from mer.model import MerModel
    from mer.model.artifact import LATEST, MODELS_DIR, join, save_artifact

    storage = cache / "storage"
    latest = storage / MODELS_DIR / LATEST
    if latest.exists():
        return join(str(storage), MODELS_DIR, latest.read_text().strip())
    config = MerConfig()
    torch.manual_seed(0)
    return save_artifact(MerModel(config).state_dict(), config=config, storage=str(storage),
                         meta={"data_fingerprint": "benchmark (untrained)", "val_metrics": {}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200, help="EMOPIA pairs to tag")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mer-bench-tagging"),
                        help="where the rendered WAVs and the model are kept between runs")
    parser.add_argument("--batch-size", type=int, default=None, help="TagConfig.batch_size (default: its default)")
    parser.add_argument("--feature-concurrency", type=int, default=None)
    parser.add_argument("--inference-concurrency", type=int, default=None)
    parser.add_argument("--loop-threads", type=int, default=None,
                        help="torch threads of the loop (default: torch's default, i.e. one per core)")
    parser.add_argument("--only", choices=("pipeline", "loop"), default=None, help="run one side only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import dataclasses

    import ray
    import torch

    from mer.config import TagConfig
    from mer.tagging import tag_store, tag_store_local

    cache = Path(args.cache_dir)
    store = build_store(cache, args.items)
    model = build_model(cache)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("feature_concurrency", args.feature_concurrency),
                                   ("inference_concurrency", args.inference_concurrency)) if v is not None}
    tagging = dataclasses.replace(TagConfig(), **overrides)
    load_before = os.getloadavg()
    result: dict = {"items": args.items, "cpus": os.cpu_count(), "tagging": dataclasses.asdict(tagging),
                    "load_average_before": [round(x, 2) for x in load_before]}

    with tempfile.TemporaryDirectory() as scratch:
        if args.only != "loop":
            start = time.perf_counter()
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            result["ray_init_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            pipeline = tag_store(str(store), catalog=os.path.join(scratch, "pipeline.db"), model=model,
                                 tagging=tagging, progress=False)
            seconds = time.perf_counter() - start
            ray.shutdown()
            assert pipeline.tagged == args.items, pipeline
            result["pipeline"] = {"seconds": round(seconds, 2), "items_per_second": round(args.items / seconds, 3),
                                  "stage_seconds": {k: round(v, 2) for k, v in pipeline.stage_seconds.items()}}
        if args.only != "pipeline":
            if args.loop_threads is not None:
                torch.set_num_threads(args.loop_threads)
            result["loop_torch_threads"] = torch.get_num_threads()
            start = time.perf_counter()
            loop = tag_store_local(str(store), catalog=os.path.join(scratch, "loop.db"), model=model,
                                   tagging=tagging)
            seconds = time.perf_counter() - start
            assert loop.tagged == args.items, loop
            result["loop"] = {"seconds": round(seconds, 2), "items_per_second": round(args.items / seconds, 3),
                              "stage_seconds": {k: round(v, 2) for k, v in loop.stage_seconds.items()}}
    if "pipeline" in result and "loop" in result:
        result["ratio"] = round(result["pipeline"]["items_per_second"] / result["loop"]["items_per_second"], 3)
        # The same with the pipeline also paying for starting Ray (a job that starts its own local cluster).
        with_init = result["pipeline"]["seconds"] + result["ray_init_seconds"]
        result["ratio_including_ray_init"] = round(result["loop"]["seconds"] / with_init, 3)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
