"""Benchmark: what averaging two cross-validated rows' probabilities would score, from their reports. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_crossval_blend.py --report CROSSVAL_JSON [...] --pair A:B [...]
        [--weight W] [--out FILE]

For each pair A:B and each seed both rows have: every held-out clip's quadrant probabilities averaged (A weighted
``W``, B ``1 - W``), the blend's 4Q / arousal / valence, and its paired 4Q difference from A with a 95% interval
from 10,000 draws of the songs (:func:`mer.evaluation.intervals.song_bootstrap`). A blend of two configurations
is what an ensemble of their models would answer, window merging aside (each row's clip probabilities are already
its windows' mean). Reads the reports only (``jobs/evaluate.py --crossval`` / ``--merge-crossval``): nothing is
trained or scored again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mer.evaluation.intervals import song_bootstrap
from mer.evaluation.results import EvalResult, read_report
from emit import emit


def blend(a: EvalResult, b: EvalResult, weight: float) -> EvalResult:
    """``a``'s clips with ``weight`` of ``a``'s probabilities and the rest of ``b``'s (same clips, any order)."""
    if sorted(a.names) != sorted(b.names):
        raise SystemExit(f"rows {a.method} and {b.method} (seed {a.seed}) were scored on different clips")
    order = {name: i for i, name in enumerate(b.names)}
    probs = weight * a.probs + (1 - weight) * b.probs[[order[name] for name in a.names]]
    return EvalResult(method=f"{a.method}+{b.method}", names=a.names, true=a.true, probs=probs, seed=a.seed,
                      extra={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, nargs="+", required=True, help="crossval.json file(s)")
    parser.add_argument("--pair", nargs="+", required=True, metavar="A:B")
    parser.add_argument("--weight", type=float, default=0.5, help="A's share of the probabilities")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, dict[int, EvalResult]] = {}
    for path in args.report:
        for row in read_report(path)["methods"]:
            for run in map(EvalResult.from_dict, row["runs"]):
                runs.setdefault(row["key"], {})[run.seed] = run

    def rounded(values: dict) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}

    result = {"reports": [str(p) for p in args.report], "weight": args.weight, "pairs": {}}
    for pair in args.pair:
        first, second = pair.split(":")
        seeds = sorted(set(runs.get(first, {})) & set(runs.get(second, {})))
        if not seeds:
            raise SystemExit(f"{pair}: no seed has both rows in {[str(p) for p in args.report]}")
        a = [runs[first][s] for s in seeds]
        blended = [blend(runs[first][s], runs[second][s], args.weight) for s in seeds]
        result["pairs"][pair] = {
            "seeds": seeds,
            first: rounded({m: float(np.mean([r.metrics[m] for r in a])) for m in ("4q", "arousal", "valence")}),
            second: rounded({m: float(np.mean([runs[second][s].metrics[m] for s in seeds]))
                             for m in ("4q", "arousal", "valence")}),
            "blend": rounded({m: float(np.mean([r.metrics[m] for r in blended]))
                              for m in ("4q", "arousal", "valence")}),
            f"blend_4q_minus_{first}": rounded(song_bootstrap(blended, minus=a)),
        }
    emit(result, args.out)


if __name__ == "__main__":
    main()
