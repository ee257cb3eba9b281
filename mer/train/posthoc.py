"""Artifacts built from trained ones, without training: calibrated, seed ensembles, with a summary head.

:func:`build_artifact` turns one or several trained artifacts of one configuration (the members of a seed
ensemble) into a new artifact whose meta.json says it is calibrated (``calibration``), for an ensemble which
members it holds (``members``), and for a model given a summary head what was fitted (``summary_head``). Only
the train and val splits are read; test never.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from mer.errors import ConfigError
from mer.features import FeatureCache
from mer.model import MerEnsemble, MerModel, load_artifact, save_artifact
from mer.train.calibrate import calibration_on_val
from mer.train.dataset import ensure_ray, extract_clips, window_table
from mer.train.emopia import emopia_root, load_split
from mer.train.summary_head import fit_summary_head


def with_summary_head(model: MerModel) -> MerModel:
    """A copy of a trained model built with a summary head (not yet fitted: it passes the network through)."""
    config = dataclasses.replace(model.config, model=dataclasses.replace(model.config.model, summary_head=True))
    upgraded = MerModel(config)
    missing, unexpected = upgraded.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("summary_head.") for key in missing):
        raise ValueError(f"weights do not fit the model with a summary head: missing {missing}, extra {unexpected}")
    return upgraded


def build_artifact(models: list[str], *, storage: str, cache_dir: str | os.PathLike,
                   emopia: str | os.PathLike | None = None, device: str | None = None,
                   endpoint_url: str | None = None, set_latest: bool = True, progress: bool = True,
                   summary_head: bool = False) -> str:
    """A calibrated artifact from one trained model, or a calibrated seed ensemble from several.

    The members must share one configuration (mer.model.MerEnsemble). With ``summary_head``, one model trained
    without a summary head gains one (:func:`mer.train.summary_head.fit_summary_head`: fitted on the train
    windows, blended on val) — no retraining. The splits' features come from the cache (extracted once if
    missing). Returns the new artifact's path or URL.
    """
    if not models:
        raise ValueError("build_artifact needs at least one model")
    if summary_head and len(models) > 1:
        raise ValueError("a summary head is fitted to one model; an ensemble's members bring their own")
    artifacts = [load_artifact(m, storage=storage, device="cpu", endpoint_url=endpoint_url) for m in models]
    refitted = [a.version for a in artifacts if a.meta.get("fitted_on") == "train+val"]
    if refitted:  # what this fits on val would be fitted on the model's own training clips
        raise ConfigError(f"model(s) {refitted} were fitted on train + val: a calibration or summary head fitted on "
                          "val would be in-sample; build from models trained on train alone")
    model = artifacts[0].model if len(artifacts) == 1 else MerEnsemble.from_members([a.model for a in artifacts])
    if summary_head and getattr(model, "summary_head", None) is None:
        model = with_summary_head(model)
    config = model.config
    ensure_ray()
    root, cache = emopia_root(emopia), FeatureCache(os.path.abspath(cache_dir))
    val_table = window_table(extract_clips(load_split(root, "val"), config=config.features, cache=cache,
                                           progress=progress).clips)
    target = device or "cpu"
    model.to(target)
    head = None
    if summary_head:
        train_table = window_table(extract_clips(load_split(root, "train"), config=config.features, cache=cache,
                                                 progress=progress).clips)
        head = fit_summary_head(model, train_table, val_table, device=target)
    calibration = calibration_on_val(model, val_table, device=target)
    members = [a.version for a in artifacts]
    meta: dict[str, Any] = {
        "calibration": calibration,
        "val_metrics": calibration["val_metrics"],
        **({"summary_head": head} if head is not None else {}),
        "data_fingerprint": artifacts[0].meta.get("data_fingerprint"),
        "source_models": members,
    }
    if len(artifacts) == 1:  # the same trained network: what its training said stays true
        trained = artifacts[0].meta
        meta.update({k: trained[k] for k in ("seed", "best_epoch", "epochs", "run") if k in trained})
    if len(artifacts) > 1:
        meta["members"] = members
    return save_artifact(model.state_dict(), config=config, storage=storage, meta=meta, set_latest=set_latest,
                         endpoint_url=endpoint_url)
