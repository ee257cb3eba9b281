"""Merge Table I + III reports written by separate runs into one, e.g. seeds trained on different days.

A seed of the full model takes most of an hour on a 2-core machine, so the three seeds of every row are rarely
trained in one sitting. Each run's ``report.json`` keeps every (method, seed) run with its per-clip test
predictions; :func:`merge_reports` pools them into one :class:`~mer.evaluation.results.TablesReport` — only when
every report was made with the same data, features, model and training settings (seeds aside), so that the
pooled mean ± std means what it says.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

from mer.config import FeatureConfig, ModelConfig, TrainConfig
from mer.errors import ConfigError
from mer.evaluation.paper import METHODS
from mer.evaluation.results import EvalResult, TablesReport, read_report
from mer.train import METRICS

SAME_SETUP: tuple[str, ...] = ("data_fingerprint", "clips", "skipped", "subset", "training", "features", "model")
"""Setup fields that must agree between merged reports (where the EMOPIA folder or the storage lived may not)."""


def _normalised(key: str, value: Any) -> Any:
    """A setup field as the current code reads it: a configuration written before a field existed gets that
    field's default (which is how it behaved), so reports from before and after a new option can be pooled."""
    kind = {"training": TrainConfig, "features": FeatureConfig, "model": ModelConfig}.get(key)
    if kind is None or not isinstance(value, dict):
        return value
    names = {f.name for f in dataclasses.fields(kind)}
    known = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items() if k in names}
    known.pop("seed", None)
    return dataclasses.asdict(kind(**known))


def _read(path: Path) -> dict[str, Any]:
    report = read_report(path)
    if not isinstance(report, dict) or "methods" not in report or "setup" not in report:
        raise ConfigError(f"{path}: not a Table I + III report (no 'methods' / 'setup'); "
                          "use the report.json of `jobs/evaluate.py --tables`")
    return report


def merge_reports(paths: Sequence[str | os.PathLike], renames: Mapping[str, str] | None = None, *,
                  methods: Collection[str] | None = None) -> TablesReport:
    """Pool the runs of several ``report.json`` files (of :func:`mer.evaluation.tables.run_tables`) into one report.

    ``renames`` maps a row key as written to the row it belongs to now, applied to every report at once (a swap is
    fine): when a configuration changes its name, e.g. the default's old settings become a row of their own and a
    candidate row becomes the default, its runs keep their numbers and move to the new row. A (method, seed)
    present in several reports must have the same test predictions (training is deterministic per seed on one
    machine; a seed retrained elsewhere is another model and belongs in no pooled report), and is
    kept once. ``methods``: pool only these rows (keys after ``renames``) and leave the others' runs out, e.g. a
    report that also holds a row's seeds retrained on another machine as the baseline of a screen. Raises
    :class:`ConfigError` naming the file and the reason when a report cannot be read, its setup differs from the
    first report's, or a run's recorded metrics do not follow from its predictions, and naming a rename or a
    method to no row of :data:`METHODS`.
    """
    if not paths:
        raise ConfigError("no reports to merge")
    renames = dict(renames or {})
    known = {m.key for m in METHODS}
    for old, new in renames.items():
        if new not in known:
            raise ConfigError(f"rename {old}={new}: {new!r} is no report row; known: {sorted(known)}")
    unknown = sorted(set(methods or ()) - known)
    if unknown:
        raise ConfigError(f"methods {unknown} are no report rows; known: {sorted(known)}")
    reports = [(Path(p), _read(Path(p))) for p in paths]
    first_path, first = reports[0]
    runs: dict[tuple[str, int], tuple[Path, EvalResult]] = {}
    for path, report in reports:
        for key in SAME_SETUP:
            if _normalised(key, report["setup"].get(key)) != _normalised(key, first["setup"].get(key)):
                raise ConfigError(f"{path}: setup field {key!r} differs from {first_path}'s "
                                  f"({report['setup'].get(key)!r} vs {first['setup'].get(key)!r}); "
                                  "only reports of the same data and settings can be pooled")
        for method in report["methods"]:
            key = renames.get(method["key"], method["key"])
            if methods is not None and key not in methods:
                continue
            for run in method["runs"]:
                result = dataclasses.replace(EvalResult.from_dict(run), method=key)
                recorded = run["metrics"]
                if any(abs(result.metrics[m] - recorded[m]) > 1e-9 for m in METRICS):
                    raise ConfigError(f"{path}: {method['key']} seed {run['seed']}: the recorded metrics "
                                      f"{recorded} do not follow from the recorded predictions")
                seen = runs.get((key, result.seed))
                if seen is not None and (seen[1].names != result.names or (seen[1].pred != result.pred).any()):
                    raise ConfigError(f"{path}: {key} seed {result.seed} predicts differently from the "
                                      f"same method and seed in {seen[0]}")
                runs.setdefault((key, result.seed), (path, result))

    results = {m.key: [runs[k][1] for k in sorted(runs) if k[0] == m.key] for m in METHODS
               if any(k[0] == m.key for k in runs)}
    setup = {**first["setup"],
             "seeds": sorted({seed for _, seed in runs}),
             "seconds": round(sum(float(r["setup"].get("seconds", 0.0)) for _, r in reports), 1),
             "merged_from": [str(p) for p, _ in reports], **({"renamed": renames} if renames else {})}
    return TablesReport(results=results, setup=setup)
