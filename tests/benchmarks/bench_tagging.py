"""Benchmark: the tagger, A/B against another checkout (the commit before a change), in one run, interleaved.

    .venv/bin/python tests/benchmarks/bench_tagging.py [--items 200] --baseline ../wt-base [--rounds 1]
        [--cache-dir /tmp/mer-bench-tagging] [--out tests/benchmarks/results/tagging.json]

Both sides tag the same local-folder store of EMOPIA pairs (MIDI + a WAV rendered with FluidSynth; rendered once
into ``--cache-dir`` and reused) into fresh SQLite catalogs, with the same full-size model of the paper's config
(``MerConfig()``; untrained — the weights do not change the cost). Every measurement runs in its own process with
``PYTHONPATH`` set to its side's checkout, one after the other, A then B for each step, so both sides see the same
machine:

1. ``pipeline`` — :func:`mer.tagging.tag_store` (feature tasks + inference actors on Ray Data), a first model
   version over the store; the new side starts with an empty feature cache and fills it.
2. ``retag`` — a second model version over the same store and catalog: the new side reads the cached features
   (inference only), the baseline extracts them again (it has no feature cache).
3. ``loop`` — :func:`mer.tagging.tag_store_local` (the same functions, item after item, one process), first
   version, fresh catalog (and a fresh cache for the new side: the same work as step 1).

A measurement is timed end to end (model loading, listing, reading, features, inference, catalog writes, the
pipeline's actor start-up); starting the local Ray cluster is not (a nightly job joins a running cluster) and is
reported as ``ray_init_seconds``. Then, with the new side's code only, ``inference`` measures the model on the
store's windows (one thread): windows/s for length-bucketed and arrival-order batches in float32, and for
length-bucketed batches with int8 weights (what a CPU actor runs by default), and the FLOPs each
executes (``torch.utils.flop_counter``: the Bi-GRU's steps over padding count; the windows' own FLOPs are the
useful part). Prints one JSON object (and writes it to ``--out``). Not collected by pytest.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from emit import emit
from memory import peak_rss_mib

HERE = Path(__file__).resolve()
NEW = HERE.parents[2]  # this checkout


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


def build_models(cache: Path) -> list[str]:
    """Two untrained full-size model artifacts (default MerConfig, seeds 0 and 1): two model versions."""
    import torch

    from mer.config import MerConfig
    from mer.model import MerModel
    from mer.model.artifact import MODELS_DIR, join, save_artifact

    storage = cache / "storage"
    urls = []
    for seed in (0, 1):
        marker = storage / f"seed-{seed}"
        if not marker.exists():
            torch.manual_seed(seed)
            url = save_artifact(MerModel(MerConfig()).state_dict(), config=MerConfig(), storage=str(storage),
                                meta={"data_fingerprint": "benchmark (untrained)", "val_metrics": {}, "seed": seed},
                                set_latest=False)
            marker.write_text(url.rsplit("/", 1)[-1])
        urls.append(join(str(storage), MODELS_DIR, marker.read_text().strip()))
    return urls



# --- one measurement, in its own process (the side's checkout on PYTHONPATH) --------------------------------------


def measure(args: argparse.Namespace) -> dict:
    """Tag ``args.store`` once with this process's ``mer`` and return what it took."""
    from mer.config import TagConfig
    from mer.tagging import tag_store, tag_store_local

    known = {f.name for f in dataclasses.fields(TagConfig)}  # the baseline's TagConfig may lack newer settings
    tagging = TagConfig(**{k: v for k, v in json.loads(args.tagging).items() if k in known})
    kwargs = {"catalog": args.catalog, "model": args.model, "tagging": tagging}
    run = tag_store if args.measure == "pipeline" else tag_store_local
    if args.feature_cache and "cache" in inspect.signature(run).parameters:  # the baseline may have no cache
        kwargs["cache"] = args.feature_cache
    result: dict = {}
    if args.measure == "pipeline":
        import ray

        start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        result["ray_init_seconds"] = round(time.perf_counter() - start, 2)
        kwargs["progress"] = False
    start = time.perf_counter()
    summary = run(str(args.store), **kwargs)
    seconds = time.perf_counter() - start
    if args.measure == "pipeline":
        import ray

        ray.shutdown()
    result.update({
        "seconds": round(seconds, 2), "items_per_second": round(summary.tagged / seconds, 3),
        "tagged": summary.tagged, "failed": summary.failed,
        "stage_seconds": {k: round(v, 2) for k, v in summary.stage_seconds.items()},
        "driver_peak_rss_mib": peak_rss_mib(),
    })
    for name in ("features_cached", "features_extracted", "passes"):
        if hasattr(summary, name):
            result[name] = getattr(summary, name)
    return result


def run_side(tree: Path, what: str, *, store: Path, catalog: str, model: str, tagging: dict,
             feature_cache: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_DEDUP_LOGS": "0"}
    command = [sys.executable, str(HERE), "--measure", what, "--store", str(store), "--catalog", catalog,
               "--model", model, "--tagging", json.dumps(tagging)]
    if feature_cache:
        command += ["--feature-cache", feature_cache]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"{what} in {tree} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{tree.name:>16} {what:<8} {result['seconds']:7.2f} s  {result['items_per_second']:6.3f} items/s",
          file=sys.stderr)
    return result


# --- inference on the store's windows (new code only) -----------------------------------------------------------


def inference(store: Path, model: str, feature_cache: str, *, batch_size: int) -> dict:
    """Windows/s and FLOPs of the model on the store's windows, bucketed vs arrival order, one thread."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mer.model import read_artifact
    from mer.tagging.predictor import WindowPredictor, length_buckets, model_batch
    from mer.tagging.prepare import batch_of, item_row, prepare_item
    from mer.storage import LocalStore
    from mer.tagging.storage import list_items

    torch.set_num_threads(1)
    config = read_artifact(model).config
    local = LocalStore(store)
    items, _ = list_items(local)
    from mer.features import FeatureCache

    cache = FeatureCache(feature_cache)
    rows = [row for item in items for row in prepare_item(local, item_row(item), config=config,
                                                          cache=cache).window_rows(config)]
    batch = batch_of(rows)
    lengths = np.asarray(batch["token_length"])
    good = np.arange(len(rows))
    predictor = WindowPredictor(model, batch_size=batch_size, num_threads=1, int8=False)

    def flops(chunks: list[np.ndarray]) -> float:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            for chunk in chunks:
                predictor.predictor.model(**_model_tensors(model_batch(batch, chunk, config=config)))
        return counter.get_total_flops()

    out = {"windows": len(rows), "mean_tokens": round(float(lengths.mean()), 1),
           "capped_windows": int((lengths >= config.features.max_tokens).sum()), "batch_size": batch_size,
           "torch_threads": 1}
    useful = flops([np.array([i]) for i in good])
    out["gflop_per_window"] = round(useful / len(rows) / 1e9, 3)
    int8 = WindowPredictor(model, batch_size=batch_size, num_threads=1, int8=True)  # what a CPU actor runs
    for name, bucket, runner in (("bucketed", True, predictor), ("arrival_order", False, predictor),
                                 ("bucketed_int8", True, int8)):
        runner.bucket = bucket
        chunks = (length_buckets(lengths, good, batch_size) if bucket
                  else [good[i:i + batch_size] for i in range(0, len(good), batch_size)])
        executed = flops(chunks)
        start = time.perf_counter()
        for pool in range(0, len(rows), 4 * batch_size):  # what an actor gets per call (BUCKET_POOL batches)
            runner(batch_of(rows[pool:pool + 4 * batch_size]))
        seconds = time.perf_counter() - start
        out[name] = {"seconds": round(seconds, 2), "windows_per_second": round(len(rows) / seconds, 2),
                     "executed_gflop_per_window": round(executed / len(rows) / 1e9, 3),
                     "padded_share_of_flops": round(1 - useful / executed, 3),
                     # int8: the float model's FLOPs, done with int8 weights in the GRU and linear layers
                     "gflop_per_second": round(useful / seconds / 1e9, 1)}
    return out


def _model_tensors(batch: dict) -> dict:
    from mer.model import model_inputs, to_tensors

    return model_inputs(to_tensors(batch))


# --- the driver ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200, help="EMOPIA pairs to tag")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mer-bench-tagging"),
                        help="where the rendered WAVs and the models are kept between runs")
    parser.add_argument("--baseline", type=Path, help="checkout of the commit to compare against (A)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the A/B sequence (B first in even rounds)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--batch-size", type=int, default=None, help="TagConfig.batch_size (default: its default)")
    parser.add_argument("--feature-concurrency", type=int, default=None)
    parser.add_argument("--inference-concurrency", type=int, default=None)
    parser.add_argument("--measure", choices=("pipeline", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--tagging", help=argparse.SUPPRESS)
    parser.add_argument("--feature-cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0

    sys.path.insert(0, str(NEW))
    from mer.config import TagConfig

    cache = Path(args.cache_dir)
    store = build_store(cache, args.items)
    first, second = build_models(cache)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("feature_concurrency", args.feature_concurrency),
                                   ("inference_concurrency", args.inference_concurrency)) if v is not None}
    tagging = {k: v for k, v in dataclasses.asdict(TagConfig(**overrides)).items() if k != "page_size"}
    sides = {"new": NEW, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    result: dict = {"items": args.items, "cpus": os.cpu_count(), "tagging": tagging,
                    "sides": {name: str(tree) for name, tree in sides.items()},
                    "load_average_before": [round(x, 2) for x in os.getloadavg()], "rounds": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            runs: dict = {name: {} for name in sides}
            folder = Path(scratch) / f"round-{round_index}"
            folder.mkdir()
            for step, model, fresh in (("pipeline", first, True), ("retag", second, False), ("loop", first, True)):
                for name in order:
                    stem = f"{name}-{step if fresh else 'pipeline'}"  # a retag reuses the pipeline's catalog
                    catalog = f"sqlite:///{folder / stem}.db"
                    feature_cache = str(folder / f"{stem}-cache")
                    runs[name][step] = run_side(
                        sides[name], "loop" if step == "loop" else "pipeline", store=store, catalog=catalog,
                        model=model, tagging=tagging, feature_cache=feature_cache)
            result["rounds"].append(runs)
            if round_index == 0:
                result["inference"] = inference(store, first, str(folder / "new-pipeline-cache"),
                                                batch_size=TagConfig(**overrides).batch_size)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result.update(summarise(result["rounds"]))
    emit(result, args.out)
    return 0


def summarise(rounds: list[dict]) -> dict:
    """The headline numbers (medians over rounds): the new side's rates, and its ratios to the baseline."""
    import statistics

    def median(side: str, step: str, key: str) -> float | None:
        values = [r[side][step][key] for r in rounds if side in r]
        return statistics.median(values) if values else None

    new_seconds = {step: median("new", step, "seconds") for step in ("pipeline", "retag", "loop")}
    out = {
        "pipeline": {"seconds": new_seconds["pipeline"], "items_per_second": median("new", "pipeline",
                                                                                    "items_per_second")},
        "retag": {"seconds": new_seconds["retag"], "items_per_second": median("new", "retag", "items_per_second")},
        "loop": {"seconds": new_seconds["loop"], "items_per_second": median("new", "loop", "items_per_second")},
        "ratio": round(new_seconds["loop"] / new_seconds["pipeline"], 3),
        # The pipeline also paying for starting Ray (a job that starts its own local cluster), vs the loop.
        "ratio_including_ray_init": round(
            new_seconds["loop"] / (new_seconds["pipeline"] + median("new", "pipeline", "ray_init_seconds")), 3),
        # A second model version over the tagged store (cached features, inference only) vs a first pass.
        "retag_vs_first_pass": round(new_seconds["pipeline"] / new_seconds["retag"], 3),
    }
    if all("baseline" in r for r in rounds):
        base = {step: median("baseline", step, "seconds") for step in ("pipeline", "retag", "loop")}
        out["baseline"] = {step: {"seconds": base[step], "items_per_second": median("baseline", step,
                                                                                     "items_per_second")}
                           for step in base}
        out["pipeline_speedup_vs_baseline"] = round(base["pipeline"] / new_seconds["pipeline"], 3)
        out["loop_speedup_vs_baseline"] = round(base["loop"] / new_seconds["loop"], 3)
        # The same operation before and after: a second model version over an already-tagged store.
        out["retag_from_cache_speedup"] = round(base["retag"] / new_seconds["retag"], 3)
    return out


if __name__ == "__main__":
    sys.exit(main())
