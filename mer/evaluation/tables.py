"""The reproduction of the paper's Table I and Table III in one report (:func:`run_tables`).

The full model, the three single-branch models, the model without self-attention (each trained with
:func:`mer.train.train_model`, selected on val) and the Symbolic-LR / Audio-LR baselines (C chosen on val), each
over several seeds, scored on EMOPIA's test split → Markdown + JSON report beside the paper's numbers
(:mod:`mer.evaluation.report`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mer.config import MerConfig
from mer.errors import BadInputError
from mer.evaluation.baselines import audio_features, fit_linear_baseline, symbolic_features
from mer.evaluation.evaluate import evaluate_features
from mer.evaluation.paper import METHODS, Method, method_config, methods_named
from mer.evaluation.report import write_tables
from mer.evaluation.results import EvalResult, TablesReport
from mer.features import FeatureCache, piano_notes, read_midi
from mer.model import MODELS_DIR, join, load_artifact
from mer.storage import open_store
from mer.train import (MIN_SUBSET_VAL_CLIPS, Clip, ClipFeatures, Extraction, build_artifact, data_fingerprint,
                       emopia_root, ensure_ray, extract_clips, load_split, progress_bar, progress_line, run_identity,
                       select_clips, subset_count, train_model)


def split_clips(root: Path, *, subset: int | None) -> dict[str, list[Clip]]:
    """EMOPIA's official splits; with ``subset``, the quadrant-balanced train/val clips :func:`train_model` uses
    and a proportional number of test clips (at least 8)."""
    splits = {s: load_split(root, s) for s in ("train", "val", "test")}
    if subset is not None:
        counts = {"train": subset,
                  "val": subset_count(subset, splits["val"], splits["train"], minimum=MIN_SUBSET_VAL_CLIPS),
                  "test": subset_count(subset, splits["test"], splits["train"], minimum=8)}
        splits = {s: select_clips(clips, counts[s]) for s, clips in splits.items()}
    return splits


def find_artifact(storage: str, config: MerConfig, fingerprint: str, *,
                  endpoint_url: str | None = None) -> str | None:
    """An artifact in ``<storage>/models/`` trained with ``config`` (same model, features, optimisation, seed
    and epochs; workers and GPU use may differ) on the data of ``fingerprint``, or None. The newest wins.
    ``endpoint_url``: S3-compatible endpoint for an ``s3://`` storage (None: AWS)."""
    models = open_store(join(storage, MODELS_DIR), endpoint_url=endpoint_url)
    try:
        folders = list(models.list_folders())
    except FileNotFoundError:  # no models folder (or bucket) yet
        return None
    wanted = run_identity(config, fingerprint)
    for folder in sorted(folders, reverse=True):  # versions sort by creation time
        try:
            meta = json.loads(models.read(f"{folder}meta.json"))
            found = MerConfig.from_json(models.read(f"{folder}config.json").decode())
            if not models.exists(f"{folder}model.pt"):
                continue
        except (OSError, ValueError, KeyError, BadInputError):  # a half-written or foreign folder: no match
            continue
        if meta.get("members"):  # a seed ensemble carries its first member's config, but it is not that model
            continue
        if found.training.epochs == config.training.epochs \
                and run_identity(found, str(meta.get("data_fingerprint"))) == wanted:
            return join(storage, MODELS_DIR, folder.rstrip("/"))
    return None


def headless_config(config: MerConfig) -> MerConfig | None:
    """The configuration of ``config``'s network trained without its summary head, when a stored model of it can
    be given the head after training (:func:`mer.train.build_artifact` fits a linear head); None for a config with
    no head, or a kernel head (trained with its model only)."""
    if not config.model.summary_head or config.model.summary_kernel_centres:
        return None
    return dataclasses.replace(config, model=dataclasses.replace(config.model, summary_head=False))


def run_tables(
    *,
    emopia: str | os.PathLike | None,
    storage: str,
    cache_dir: str | os.PathLike,
    out: str | os.PathLike,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    subset: int | None = None,
    workers: int | None = None,
    base_config: MerConfig | None = None,
    methods: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    endpoint_url: str | None = None,
) -> TablesReport:
    """Reproduce Table I (full model, Symbolic-LR, Audio-LR) and Table III (full model, symbolic / harmony /
    tone-colour branch alone, without MHSA) on the EMOPIA test split, over ``seeds``, and write the report.

    Each deep model is trained with :func:`mer.train.loop.train_model` (best checkpoint by val 4Q accuracy) —
    unless ``storage`` already holds an artifact of the same configuration, seed, epochs and data
    (:func:`find_artifact`), which is reused, so a re-run does not retrain — and evaluated on the test split
    once. A model trained here does not become the storage's ``LATEST`` (what the tagger serves). The linear
    baselines choose C on val and are evaluated on test once per seed.

    Args:
        emopia: the EMOPIA folder (None: ``$MER_EMOPIA`` or ``../shared/emopia``).
        storage: runs and model artifacts (local folder or ``s3://``), as for ``train_model``.
        cache_dir: the feature cache folder.
        out: the report folder: ``report.md``, ``report.json``, ``confusion_<method>.png`` (summed over
            seeds), ``attention_full.png``.
        seeds: training seeds (>= 3 for the paper's protocol).
        epochs: every deep row's epochs (a preset row's too: :func:`mer.evaluation.paper.method_config`);
            None: ``base_config``'s for the paper's rows, the preset's for the ``default...`` rows.
        workers: overrides ``base_config.training.num_workers``.
        subset: train on this many train clips (and proportional val/test clips): quick runs and tests.
        base_config: the full model's configuration (default :class:`MerConfig`).
        methods: keys of :data:`METHODS` to run (default: every row of the paper's tables, not ``default``).
        device: evaluation device (default CUDA when present).
        progress: print progress lines.
        endpoint_url: S3-compatible endpoint for an ``s3://`` storage (None: AWS).

    Returns:
        The :class:`TablesReport` (also written to ``out``).
    """
    def log(message: str) -> None:
        progress_line(f"[tables] {message}", enabled=progress)

    base = base_config or MerConfig()
    base = dataclasses.replace(base, training=dataclasses.replace(
        base.training,
        epochs=base.training.epochs if epochs is None else epochs,
        num_workers=base.training.num_workers if workers is None else workers,
    ))
    # Without a choice, the paper's rows (Tables I and III); a preset's row (the default configuration) on request.
    named = methods_named(methods) if methods is not None else None
    chosen = [m for m in METHODS if (m in named if named is not None else m.preset is None)]
    if not seeds:
        raise ValueError("run_tables needs at least one seed")
    started = time.monotonic()
    ensure_ray()
    root = emopia_root(emopia)
    cache = FeatureCache(os.path.abspath(cache_dir))
    splits = split_clips(root, subset=subset)
    log(f"EMOPIA {root}: " + ", ".join(f"{s} {len(c)} clips" for s, c in splits.items())
        + f"; methods {[m.key for m in chosen]}; seeds {list(seeds)}; epochs "
        + ", ".join(f"{m.key} {method_config(base, m, seed=0, epochs=epochs).training.epochs}"
                    for m in chosen if m.deep))

    # Features of every split once (the model variants share the feature config); the test split's are the
    # ones every model is scored on.
    log("features: extracting (or reading from the cache) for train, val and test")
    extracted = {s: extract_clips(c, config=base.features, cache=cache, progress=progress)
                 for s, c in splits.items()}
    fingerprint = data_fingerprint({"train": extracted["train"].clips, "val": extracted["val"].clips})
    test_items, test_skipped = extracted["test"].clips, extracted["test"].failures

    results: dict[str, list[EvalResult]] = {}
    deep = [m for m in chosen if m.deep]
    total, done = len(deep) * len(seeds), 0
    bar = progress_bar(total=total, desc="[tables] models", unit="model", enabled=progress)
    for method in deep:
        results[method.key] = []
        for seed in seeds:
            done += 1
            config = method_config(base, method, seed=seed, epochs=epochs)
            tag = f"({done}/{total}) {method.label}, seed {seed}"
            found = find_artifact(storage, config, fingerprint, endpoint_url=endpoint_url)
            headless = None
            network_alone = headless_config(config)
            if found is None and network_alone is not None:  # the same network trained without the head?
                headless = find_artifact(storage, network_alone, fingerprint, endpoint_url=endpoint_url)
            if found is not None:
                log(f"{tag}: reusing trained model {found}")
                url = found
            elif headless is not None:
                log(f"{tag}: fitting a summary head to trained model {headless} (no retraining)")
                url = build_artifact([headless], storage=storage, cache_dir=cache_dir, emopia=root,
                                     endpoint_url=endpoint_url, set_latest=False, progress=progress,
                                     summary_head=True)
            else:
                log(f"{tag}: training {config.training.epochs} epoch(s) on {config.training.num_workers} worker(s)")
                trained = train_model(config, emopia=root, storage=storage, cache_dir=cache_dir,
                                run_name=f"tables-{method.key}-seed{seed}-{run_identity(config, fingerprint)[:8]}",
                                subset=subset, progress=progress, endpoint_url=endpoint_url,
                                set_latest=False)  # an ablation is not a model to serve
                url = trained.artifact
            artifact = load_artifact(url, device=device, endpoint_url=endpoint_url)
            result = evaluate_features(artifact, test_items, device=device, method=method.key,
                                       skipped=test_skipped)
            results[method.key].append(result)
            m = result.metrics
            log(f"{tag}: test 4Q {m['4q']:.3f}  arousal {m['arousal']:.3f}  valence {m['valence']:.3f}  "
                f"(val 4Q {(result.extra.get('val_metrics') or {}).get('4q', float('nan')):.3f}, "
                f"model {artifact.version})")
            bar.update()
    bar.close()

    for method in (m for m in chosen if not m.deep):
        log(f"{method.label}: features, C chosen on val, {len(seeds)} seed(s)")
        results[method.key] = run_baseline(method, extracted, config=base, seeds=seeds)
        m = results[method.key][0].metrics
        log(f"{method.label}: test 4Q {m['4q']:.3f}  arousal {m['arousal']:.3f}  valence {m['valence']:.3f}  "
            f"(C = {results[method.key][0].extra['c']})")

    setup = {
        "emopia": str(root),
        "clips": {s: len(extracted[s].clips) for s in splits},
        "skipped": {s: [list(f) for f in extracted[s].failures] for s in splits},
        "subset": subset,
        "seeds": list(seeds),
        "data_fingerprint": fingerprint,
        "training": {k: v for k, v in dataclasses.asdict(base.training).items() if k != "seed"},  # seeds above
        "features": dataclasses.asdict(base.features),
        "model": dataclasses.asdict(base.model),
        "storage": storage,
        "seconds": round(time.monotonic() - started, 1),
    }
    report = TablesReport(results=results, setup=setup)
    write_tables(report, out)
    log(f"report written to {Path(out) / 'report.md'} ({setup['seconds']:.0f} s)")
    return report


def run_baseline(method: Method, extracted: dict[str, Extraction], *, config: MerConfig,
                 seeds: Sequence[int]) -> list[EvalResult]:
    """Fit a linear baseline on train (C on val) once per seed and score it on test: one :class:`EvalResult`
    per seed. Symbolic-LR reads each clip's MIDI notes; Audio-LR pools the clip's cached chroma/MFCC windows."""
    def design(items: Sequence[ClipFeatures]) -> tuple[np.ndarray, np.ndarray]:
        if method.baseline == "symbolic":
            rows = [symbolic_features(piano_notes(read_midi(i.clip.midi_path.read_bytes(), name=i.clip.name),
                                                  config=config.features), name=i.clip.name) for i in items]
        else:
            rows = [audio_features(i.features, config=config.features) for i in items]
        return np.stack(rows), np.array([i.clip.quadrant for i in items], dtype=np.int64)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (design(extracted[s].clips)
                                                           for s in ("train", "val", "test"))
    results = []
    for seed in seeds:
        baseline = fit_linear_baseline(x_train, y_train, x_val, y_val, seed=seed)
        results.append(EvalResult(
            method=method.key, names=[i.clip.name for i in extracted["test"].clips], true=y_test,
            probs=baseline.predict_proba(x_test), attention=None, branches=(), seed=seed,
            extra={"c": baseline.c, "val_metrics": {"4q": baseline.val_accuracy[baseline.c]},
                   "val_accuracy_by_c": {str(c): a for c, a in baseline.val_accuracy.items()},
                   "features": x_train.shape[1]},
        ))
    return results
