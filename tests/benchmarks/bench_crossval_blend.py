"""Benchmark: what averaging two cross-validated rows' probabilities would score, from their reports. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_crossval_blend.py --report CROSSVAL_JSON [...] [--pair A:B ...]
        [--ensemble ROW ...] [--weight W] [--out FILE]

For each pair A:B and each seed both rows have: every held-out clip's quadrant probabilities averaged (A weighted
``W``, B ``1 - W``), the blend's 4Q / arousal / valence, and its paired 4Q difference from A with a 95% interval
from 10,000 draws of the songs (:func:`mer.evaluation.intervals.song_bootstrap`). A blend of two configurations
is what an ensemble of their models would answer, window merging aside (each row's clip probabilities are already
its windows' mean). ``--ensemble ROW``: all of a row's seeds averaged (a seed ensemble), against its seeds one by
one (paired: the ensemble minus the seeds' mean). Reads the reports only (``jobs/evaluate.py --crossval`` /
``--merge-crossval``): nothing is trained or scored again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mer.evaluation.intervals import song_bootstrap
from mer.evaluation.results import EvalResult, read_report
from emit import emit


def blend(runs: list[EvalResult], weights: list[float]) -> EvalResult:
    """The first run's clips, each with the ``weights``-weighted sum of the runs' probabilities (same clips, any
    order)."""
    first = runs[0]
    probs = np.zeros_like(first.probs)
    for run, weight in zip(runs, weights, strict=True):
        if sorted(run.names) != sorted(first.names):
            raise SystemExit(f"{run.method} (seed {run.seed}) and {first.method} (seed {first.seed}) were scored on "
                             "different clips")
        order = {name: i for i, name in enumerate(run.names)}
        probs += weight * run.probs[[order[name] for name in first.names]]
    return EvalResult(method="+".join(r.method for r in runs), names=first.names, true=first.true, probs=probs,
                      seed=first.seed, extra={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, nargs="+", required=True, help="crossval.json file(s)")
    parser.add_argument("--pair", nargs="+", default=[], metavar="A:B")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="ROW", help="a row's seeds averaged")
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

    def metrics(results: list[EvalResult]) -> dict:
        return rounded({m: float(np.mean([r.metrics[m] for r in results])) for m in ("4q", "arousal", "valence")})

    result = {"reports": [str(p) for p in args.report], "weight": args.weight, "pairs": {}, "ensembles": {}}
    for pair in args.pair:
        first, second = pair.split(":")
        seeds = sorted(set(runs.get(first, {})) & set(runs.get(second, {})))
        if not seeds:
            raise SystemExit(f"{pair}: no seed has both rows in {[str(p) for p in args.report]}")
        a = [runs[first][s] for s in seeds]
        blended = [blend([runs[first][s], runs[second][s]], [args.weight, 1 - args.weight]) for s in seeds]
        result["pairs"][pair] = {
            "seeds": seeds,
            first: metrics(a), second: metrics([runs[second][s] for s in seeds]), "blend": metrics(blended),
            f"blend_4q_minus_{first}": rounded(song_bootstrap(blended, minus=a)),
        }
    for key in args.ensemble:
        seeds = sorted(runs.get(key, {}))
        if len(seeds) < 2:
            raise SystemExit(f"{key}: a seed ensemble needs at least 2 seeds, the reports hold {seeds}")
        members = [runs[key][s] for s in seeds]
        ensemble = blend(members, [1 / len(members)] * len(members))
        result["ensembles"][key] = {"seeds": seeds, "members": metrics(members), "ensemble": metrics([ensemble]),
                                    "ensemble_4q_minus_members": rounded(song_bootstrap([ensemble], minus=members))}
    emit(result, args.out)


if __name__ == "__main__":
    main()
