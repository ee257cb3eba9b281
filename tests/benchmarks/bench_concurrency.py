"""Benchmark: the first Ray Data pass over bench_tagging's store with different feature/inference concurrencies.

    .venv/bin/python tests/benchmarks/bench_concurrency.py --model <artifact> [--store /tmp/mer-bench-tagging/store]
        [--out tests/benchmarks/results/tagging_concurrency.json]

Run after ``bench_tagging.py`` (which renders the store and builds the untrained models). Each setting tags the
whole store into a fresh SQLite catalog with a fresh feature cache (features extracted, as a first model version
does), one after another on one local Ray. Prints one JSON object. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from emit import emit

SETTINGS = ((2, 1), (2, 2), (3, 1))  # (feature_concurrency, inference_concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model artifact (bench_tagging's storage/models/<version>)")
    parser.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "mer-bench-tagging", "store"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import ray

    from mer.config import TagConfig
    from mer.tagging import tag_store

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    result: dict = {"store": args.store, "cpus": os.cpu_count(), "load_average_before": os.getloadavg(), "runs": []}
    for features, inference in SETTINGS:
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            summary = tag_store(args.store, catalog=f"sqlite:///{scratch}/catalog.db", model=args.model,
                                progress=False, cache=f"{scratch}/cache",
                                tagging=TagConfig(feature_concurrency=features, inference_concurrency=inference))
            result["runs"].append({
                "feature_concurrency": features, "inference_concurrency": inference,
                "seconds": round(time.perf_counter() - start, 2), "tagged": summary.tagged,
                "stage_seconds": {k: round(v, 1) for k, v in summary.stage_seconds.items()}})
    ray.shutdown()
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
