"""Benchmark: what a tagging worker imports before its first item, A/B against another checkout, in one run.

    .venv/bin/python tests/benchmarks/bench_worker_imports.py --baseline ../wt-prev [--repeats 5]
        [--out tests/benchmarks/results/worker_imports.json]

A Ray Data feature task unpickles ``mer.tagging.attempts.extract_window_rows_counted`` (before the change:
``mer.tagging.pipeline``'s), an inference actor ``mer.tagging.predictor.WindowPredictor``; each import runs in a
fresh process with its side's checkout on ``PYTHONPATH``, sides interleaved, and the median wall time of
``import`` is kept with the heavy modules that came with it. Prints one JSON object. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from emit import emit

NEW = Path(__file__).resolve().parents[2]
HEAVY = ("mer.catalog", "sqlalchemy", "prometheus_client", "mer.tagging.plan", "scipy.fft", "librosa", "torch")
WORKER_MODULES = {"feature task": ("mer.tagging.attempts", "mer.tagging.pipeline"),
                  "inference actor": ("mer.tagging.predictor", "mer.tagging.predictor")}
"""Per worker: the module it imports with this change's layout, and with the baseline's."""

TIMED = ("import sys, time\nstart = time.perf_counter()\nimport {module}\nseconds = time.perf_counter() - start\n"
         "import json\nprint(json.dumps({{'seconds': seconds, 'heavy': [m for m in {heavy!r} if m in sys.modules]}}))")


def import_once(tree: Path, module: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", TIMED.format(module=module, heavy=HEAVY)], env=env, cwd="/",
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the commit to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sides = {"new": NEW, "baseline": args.baseline.resolve()}
    result: dict = {"sides": {k: str(v) for k, v in sides.items()}, "repeats": args.repeats,
                    "load_average_before": [round(x, 2) for x in os.getloadavg()], "workers": {}}
    for worker, (new_module, old_module) in WORKER_MODULES.items():
        runs: dict = {"new": [], "baseline": []}
        for _ in range(args.repeats):
            for side, module in (("new", new_module), ("baseline", old_module)):
                runs[side].append(import_once(sides[side], module))
        result["workers"][worker] = {
            side: {"module": new_module if side == "new" else old_module,
                   "median_seconds": round(statistics.median(r["seconds"] for r in rows), 3),
                   "heavy_modules": rows[0]["heavy"]}
            for side, rows in runs.items()}
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
