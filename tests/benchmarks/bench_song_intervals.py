"""Benchmark: how far each row's test accuracy can be trusted, by resampling EMOPIA's test songs. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_song_intervals.py [--report PATH] [--pair ROW:BASE ...] [--out FILE]

For every row of the headline report with at least 3 seeds: its 4Q, arousal and valence accuracy (mean over its
seeds) with a 95% interval from 10,000 draws of the test songs (:func:`mer.evaluation.intervals.song_bootstrap`),
and for every row other than ``default`` the paired difference from ``default`` on 4Q (and from another row
with ``--pair ROW:BASE``). Reads the report only: nothing is trained or scored again.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mer.evaluation.intervals import song_bootstrap
from mer.evaluation.results import EvalResult
from emit import emit

ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ROOT / "tests" / "benchmarks" / "results" / "headline" / "report.json"
MIN_SEEDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=HEADLINE)
    parser.add_argument("--pair", action="append", default=[], metavar="ROW:BASE",
                        help="also the paired 4Q difference ROW minus BASE (repeatable)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    rows = {m["key"]: [EvalResult.from_dict(run) for run in m["runs"]] for m in report["methods"]
            if len(m["runs"]) >= MIN_SEEDS}

    def rounded(interval: dict) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in interval.items()}

    report_path = args.report.resolve()
    shown = report_path.relative_to(ROOT) if report_path.is_relative_to(ROOT) else report_path
    result = {"report": str(shown), "min_seeds": MIN_SEEDS, "rows": {}}
    for key, runs in rows.items():
        entry = {"seeds": [r.seed for r in runs],
                 **{metric: rounded(song_bootstrap(runs, metric=metric)) for metric in ("4q", "arousal", "valence")}}
        if key != "default" and "default" in rows:
            entry["4q_minus_default"] = rounded(song_bootstrap(runs, minus=rows["default"]))
        result["rows"][key] = entry
    result["pairs"] = {pair: rounded(song_bootstrap(rows[pair.split(":")[0]], minus=rows[pair.split(":")[1]]))
                       for pair in args.pair}
    emit(result, args.out)


if __name__ == "__main__":
    main()
