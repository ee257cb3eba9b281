"""Song-grouped cross-validation over EMOPIA's train + val: a row's accuracy on 965 clips instead of val's 198.

Val (198 clips) and test (86) each move by a few points when one seed or one song changes, and twice they have
pointed opposite ways on rows a few points apart. Here EMOPIA's train and val are pooled and cut into ``folds``
parts by song (:func:`mer.train.song_folds`); for fold ``i`` the model trains on the other parts but one, selects
on part ``i + 1`` (checkpoint, summary head, temperature: whatever the row chooses on val) and is scored on part
``i``, which it never saw. Every clip of train + val is scored once per seed, by a model that did not train or
select on it; rows cross-validated with the same folds are compared clip by clip, songs resampled
(:func:`mer.evaluation.intervals.song_bootstrap`). Test stays out of it, for the final score.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mer.config import MerConfig
from mer.errors import ConfigError
from mer.evaluation.evaluate import evaluate_features
from mer.evaluation.intervals import song_bootstrap
from mer.evaluation.paper import Method, method_config, methods_named
from mer.evaluation.plots import plot_confusion
from mer.evaluation.results import EvalResult, read_report
from mer.evaluation.tables import find_artifact
from mer.features import FeatureCache
from mer.model import load_artifact
from mer.train import (METRICS, Clip, ClipFeatures, data_fingerprint, emopia_root, ensure_ray, extract_clips,
                       load_split, progress_bar, progress_line, run_identity, select_clips, song_folds, summarise,
                       train_model)


def fold_splits(clips: list[Clip], folds: int, *, seed: int = 0) -> list[dict[str, list[Clip]]]:
    """For each fold ``i`` of :func:`mer.train.song_folds`: ``{"train", "val", "test"}`` = (every part but ``i``
    and ``i + 1``, part ``i + 1``, part ``i``). Each clip is in one test part; no song is on two sides."""
    if folds < 3:
        raise ValueError(f"cross-validation needs at least 3 folds (train, val and test parts), got {folds}")
    parts = song_folds(clips, folds, seed=seed)
    return [{"train": [c for j, part in enumerate(parts) if j not in (i, (i + 1) % folds) for c in part],
             "val": parts[(i + 1) % folds], "test": parts[i]} for i in range(folds)]


def pooled(results: Sequence[EvalResult], *, method: str) -> EvalResult:
    """One seed's folds as one result over all their clips (each fold's test part in turn), the folds listed in
    ``extra["folds"]`` (model, best epoch, val and held-out 4Q, clips)."""
    attention = [r.attention for r in results]
    first = results[0]
    return EvalResult(
        method=method, names=[n for r in results for n in r.names], true=np.concatenate([r.true for r in results]),
        probs=np.concatenate([r.probs for r in results]),
        attention=None if any(a is None for a in attention) else np.concatenate(attention),
        branches=first.branches, seed=first.seed, version=None,
        extra={"val_metrics": {m: float(np.mean([r.extra["val_metrics"][m] for r in results])) for m in METRICS},
               "folds": [{"fold": i, "model": r.version, "best_epoch": r.extra.get("best_epoch"),
                          "val_4q": r.extra["val_metrics"]["4q"], "held_out_4q": r.metrics["4q"],
                          "clips": len(r.names)} for i, r in enumerate(results)],
               "skipped": [s for r in results for s in r.extra.get("skipped", [])]},
    )


def run_crossval(
    *,
    emopia: str | os.PathLike | None,
    storage: str,
    cache_dir: str | os.PathLike,
    out: str | os.PathLike,
    methods: Sequence[str],
    folds: int = 5,
    seeds: Sequence[int] = (0,),
    split_seed: int = 0,
    epochs: int | None = None,
    subset: int | None = None,
    workers: int | None = None,
    base_config: MerConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Cross-validate the deep rows ``methods`` (keys of :data:`mer.evaluation.paper.METHODS`) over EMOPIA's
    train + val, ``folds`` song-grouped folds (cut by ``split_seed``), once per training seed, and write
    ``crossval.json``, ``crossval.md`` and a confusion matrix per row into ``out``.

    A fold's model is saved in ``storage`` without moving its ``LATEST`` (it is not a model to serve); one
    already there (same configuration, seed, epochs and fold data) is reused, so a re-run
    trains only what is missing. ``epochs``: every row's epochs, its own (a preset row's too) replaced — a cheaper
    screen, the same for every row compared. ``subset``: only this many train + val clips (quadrant-balanced), for
    tests.
    Returns the written report: per row, its pooled runs (one per seed, in :class:`EvalResult`'s JSON form), their
    summary and song-resampled interval; per later row, its paired 4Q difference from the first row.
    """
    def log(message: str) -> None:
        progress_line(f"[crossval] {message}", enabled=progress)

    chosen = methods_named(methods)
    if not chosen:
        raise ValueError("run_crossval needs at least one row")
    if any(not m.deep for m in chosen):
        raise ValueError(f"cross-validation trains networks; {[m.key for m in chosen if not m.deep]} are linear "
                         "baselines")
    if not seeds:
        raise ValueError("run_crossval needs at least one seed")
    base = base_config or MerConfig()
    base = dataclasses.replace(base, training=dataclasses.replace(
        base.training, num_workers=base.training.num_workers if workers is None else workers))

    def row_config(method: Method, seed: int) -> MerConfig:
        return method_config(base, method, seed=seed, epochs=epochs)

    started = time.monotonic()
    ensure_ray()
    root = emopia_root(emopia)
    clips = select_clips([*load_split(root, "train"), *load_split(root, "val")], subset)
    splits = fold_splits(clips, folds, seed=split_seed)
    log(f"EMOPIA {root}: train + val, {len(clips)} clips of {len({c.song for c in clips})} songs in {folds} "
        f"song-grouped folds ({', '.join(str(len(s['test'])) for s in splits)} clips); "
        f"rows {[m.key for m in chosen]}; seeds {list(seeds)}; epochs "
        + ", ".join(f"{m.key} {row_config(m, 0).training.epochs}" for m in chosen))
    cache = FeatureCache(os.path.abspath(cache_dir), endpoint_url=endpoint_url)
    extraction = extract_clips(clips, config=base.features, cache=cache, progress=progress)
    items = {item.clip.name: item for item in extraction.clips}

    def usable(part: list[Clip]) -> list[ClipFeatures]:
        return [items[c.name] for c in part if c.name in items]

    results: dict[str, list[EvalResult]] = {}
    bar = progress_bar(total=len(chosen) * len(seeds) * folds, desc="[crossval] models", unit="model",
                       enabled=progress)
    for method in chosen:
        results[method.key] = []
        for seed in seeds:
            config = row_config(method, seed)
            by_fold = []
            for i, split in enumerate(splits):
                fingerprint = data_fingerprint({"train": usable(split["train"]), "val": usable(split["val"])})
                url = find_artifact(storage, config, fingerprint, endpoint_url=endpoint_url)
                tag = f"{method.key}, seed {seed}, fold {i + 1}/{folds}"
                if url is None:
                    log(f"{tag}: training {config.training.epochs} epoch(s)")
                    url = train_model(config, emopia=root, storage=storage, cache_dir=cache_dir,
                                      run_name=f"crossval-{method.key}-seed{seed}-fold{i}-"
                                               f"{run_identity(config, fingerprint)[:8]}",
                                      progress=progress, endpoint_url=endpoint_url,
                                      split=(split["train"], split["val"]), set_latest=False).artifact
                else:
                    log(f"{tag}: reusing trained model {url}")
                result = evaluate_features(load_artifact(url, device=device, endpoint_url=endpoint_url),
                                           usable(split["test"]), device=device, method=method.key)
                log(f"{tag}: held-out 4Q {result.metrics['4q']:.3f} (val 4Q {result.extra['val_metrics']['4q']:.3f})")
                by_fold.append(result)
                bar.update()
            results[method.key].append(pooled(by_fold, method=method.key))
    bar.close()

    report = crossval_report(results, setup={
        "protocol": f"song-grouped {folds}-fold cross-validation over EMOPIA train + val (fold i held out, fold "
                    "i+1 for selection, the rest for training)",
        "emopia": str(root), "folds": folds, "epochs": {m.key: row_config(m, 0).training.epochs for m in chosen},
        "split_seed": split_seed, "seeds": list(seeds), "subset": subset,
        "clips": len(extraction.clips), "songs": len({c.song for c in clips}),
        "skipped": [list(f) for f in extraction.failures],
        "fold_clips": [len(s["test"]) for s in splits], "seconds": round(time.monotonic() - started, 1)})
    write_crossval(report, results, out)
    log(f"report written to {Path(out) / 'crossval.md'} ({report['setup']['seconds']:.0f} s)")
    return report


def crossval_report(results: dict[str, list[EvalResult]], *, setup: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a cross-validation: per row its runs, mean ± std over seeds, songs-resampled interval; per row
    after the first, its paired 4Q difference from the first (same clips, same folds)."""
    first = next(iter(results))
    rows = []
    for key, runs in results.items():
        (method,) = methods_named([key])
        row = {"key": key, "label": method.label, "seeds": [r.seed for r in runs],
               "ours": {m: summarise([r.metrics[m] for r in runs]) for m in METRICS},
               "val": summarise([r.extra["val_metrics"]["4q"] for r in runs]),
               "interval_4q": song_bootstrap(runs),
               "runs": [r.to_dict() for r in runs]}
        if key != first:
            row[f"4q_minus_{first}"] = song_bootstrap(runs, minus=results[first])
        rows.append(row)
    return {"setup": setup, "methods": rows}


def write_crossval(report: dict[str, Any], results: dict[str, list[EvalResult]],
                   out: str | os.PathLike) -> dict[str, Path]:
    """``crossval.json``, ``crossval.md`` and ``crossval_confusion_<row>.png`` (summed over seeds) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {f"confusion_{key}": plot_confusion(
        sum(r.confusion for r in runs), out / f"crossval_confusion_{key}.png",
        title=f"{key}: held-out folds of train + val, {len(runs)} seed(s) summed") for key, runs in results.items()}
    paths["json"] = out / "crossval.json"
    paths["json"].write_text(json.dumps(report, indent=2))
    setup = report["setup"]
    first = report["methods"][0]["key"]
    lines = [f"# Cross-validation over EMOPIA train + val", "",
             f"{setup['protocol']}: {setup['clips']} clips of {setup['songs']} songs, folds of "
             f"{setup['fold_clips']} clips (split seed {setup['split_seed']}); training seeds {setup['seeds']}. "
             "Each clip is scored by a model that neither trained nor selected on it. Audio rendered from the MIDI "
             "with FluidSynth.", "",
             "| Row | 4Q (± over seeds) | Arousal | Valence | 95% songs interval (4Q) | Val 4Q (selection folds) | "
             f"4Q minus {first} (95% interval) |", "|---|---|---|---|---|---|---|"]
    for row in report["methods"]:
        ours, interval = row["ours"], row["interval_4q"]
        diff = row.get(f"4q_minus_{first}")
        lines.append(f"| {row['label']} (`{row['key']}`) | "
                     + " | ".join(f"{ours[m]['mean']:.3f}"
                                  + (f" ± {ours[m]['std']:.3f}" if len(row["seeds"]) > 1 else "") for m in METRICS)
                     + f" | {interval['low']:.3f} to {interval['high']:.3f} | {row['val']['mean']:.3f} | "
                     + ("—" if diff is None else f"{diff['estimate']:+.3f} ({diff['low']:+.3f} to {diff['high']:+.3f})")
                     + " |")
    lines += ["", "## Folds", "", "| Row | Seed | Fold | Model | Best epoch | Val 4Q | Held-out 4Q | Clips |",
              "|---|---|---|---|---|---|---|---|"]
    for row in report["methods"]:
        for run in row["runs"]:
            for fold in run["folds"]:
                lines.append(f"| `{row['key']}` | {run['seed']} | {fold['fold'] + 1} | {fold['model']} | "
                             f"{fold['best_epoch']} | {fold['val_4q']:.3f} | {fold['held_out_4q']:.3f} | "
                             f"{fold['clips']} |")
    lines += ["", "## Pictures", ""] + [f"![{key}]({path.name})" for key, path in paths.items()
                                        if path.suffix == ".png"]
    paths["markdown"] = out / "crossval.md"
    paths["markdown"].write_text("\n".join(lines) + "\n")
    return paths


SAME_FOLDS: tuple[str, ...] = ("folds", "split_seed", "subset", "clips", "songs", "skipped", "fold_clips")
"""Setup fields two cross-validations must share to be compared clip by clip (the same folds of the same clips)."""


def _fold_members(run: EvalResult) -> list[frozenset[str]]:
    """A pooled run's clips, fold by fold (its names are its folds' held-out clips in fold order)."""
    ends = np.cumsum([fold["clips"] for fold in run.extra["folds"]])
    return [frozenset(run.names[start:end]) for start, end in zip([0, *ends[:-1]], ends)]


def merge_crossval(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                   methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Pool the rows (and seeds) of cross-validations written by separate runs into one report in ``out``, the
    paired differences recomputed: a row cross-validated today is compared clip by clip with one from last week,
    without retraining it. Refused unless every report cut the same clips into the same folds, clip for clip; a
    (row, seed) found twice is refused too. ``methods``: these rows, in this order (the first is the one the others
    are compared with); default: every row, in the order the reports give them."""
    reports = []
    for path in map(Path, paths):
        report = read_report(path)
        if not is_crossval_report(report):
            raise ConfigError(f"{path}: not a cross-validation report; use the crossval.json of "
                              "`jobs/evaluate.py --crossval`")
        reports.append((path, report))
    if not reports:
        raise ValueError("merge_crossval needs at least one report")
    (first_path, first), folds = reports[0], None
    results: dict[str, list[EvalResult]] = {}
    epochs: dict[str, int] = {}
    for path, report in reports:
        for key, budget in report["setup"]["epochs"].items():
            if epochs.setdefault(key, budget) != budget:
                raise ConfigError(f"{path}: row {key} trained {budget} epoch(s) a fold, {epochs[key]} in an earlier "
                                  "report; seeds of one row must share their budget")
        for field in SAME_FOLDS:
            if report["setup"].get(field) != first["setup"].get(field):
                raise ConfigError(f"{path}: {field} {report['setup'].get(field)!r} differs from {first_path}'s "
                                  f"{first['setup'].get(field)!r}; only the same folds can be compared")
        for row in report["methods"]:
            for run in map(EvalResult.from_dict, row["runs"]):
                members = _fold_members(run)
                if folds is None:
                    folds = members
                elif members != folds:
                    raise ConfigError(f"{path}: row {row['key']} seed {run.seed} held out other clips in its folds "
                                      f"than {first_path}'s; only the same folds can be compared")
                if run.seed in [r.seed for r in results.get(row["key"], [])]:
                    raise ConfigError(f"{path}: row {row['key']} seed {run.seed} is in more than one report")
                results.setdefault(row["key"], []).append(run)
    chosen = [m.key for m in methods_named(methods)] if methods is not None else list(results)
    missing = [key for key in chosen if key not in results]
    if missing:
        raise ConfigError(f"rows {missing} are in none of the reports (they hold {list(results)})")
    results = {key: sorted(results[key], key=lambda r: r.seed) for key in chosen}
    setups = [report["setup"] for _, report in reports]
    setup = {**{field: first["setup"].get(field) for field in ("protocol", "emopia", *SAME_FOLDS)},
             "epochs": {key: epochs[key] for key in results},
             "seeds": sorted({r.seed for runs in results.values() for r in runs}),
             "seconds": round(sum(s.get("seconds", 0.0) for s in setups), 1),
             "merged_from": [{"report": str(path), "seconds": report["setup"].get("seconds")}
                             for path, report in reports]}
    report = crossval_report(results, setup=setup)
    write_crossval(report, results, out)
    return report


def is_crossval_report(report: Any) -> bool:
    """Whether a parsed JSON report is a :func:`run_crossval` report (not a Table I + III one)."""
    return isinstance(report, dict) and isinstance(report.get("setup"), dict) and "folds" in report["setup"] \
        and isinstance(report.get("methods"), list)
