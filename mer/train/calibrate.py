"""Calibration and seed ensembles of trained models, fitted on EMOPIA's validation split.

:func:`calibration_on_val` fits the temperature of a model's quadrant probabilities on the val windows
(:mod:`mer.model.calibration`) and reports what it changed. :func:`build_artifact` turns one or several trained
artifacts of one configuration (the members of a seed ensemble) into a new artifact whose meta.json says it is
calibrated (``calibration``) and, for an ensemble, which members it holds (``members``). Test is never read here.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from mer.features import FeatureCache
from mer.model import (MerEnsemble, clip_probabilities, expected_calibration_error, fit_temperature, load_artifact,
                       nll, predict_windows, save_artifact)
from mer.train.dataset import ensure_ray, extract_clips, take, window_table
from mer.train.emopia import emopia_root, load_split
from mer.train.scores import quadrant_metrics

EVAL_BATCH = 64


def window_log_probs(model: torch.nn.Module, table: Mapping[str, np.ndarray], *, device: str | torch.device = "cpu"
                     ) -> np.ndarray:
    """Uncalibrated log quadrant probabilities (N, 4) of a window table (a softmax of them gives the model's
    probabilities; they differ from the logits by a per-row constant, which temperature scaling ignores)."""
    temperature = getattr(model, "quadrant_temperature", 1.0)
    model.quadrant_temperature = 1.0
    try:
        out = np.empty((len(table["quadrant"]), 4), dtype=np.float64)
        for start in range(0, len(out), EVAL_BATCH):
            rows = np.arange(start, min(start + EVAL_BATCH, len(out)))
            out[rows] = predict_windows(model, take(table, rows), device=device)["quadrant_probs"]
    finally:
        model.quadrant_temperature = temperature
    return np.log(np.clip(out, 1e-12, 1.0))


def calibration_on_val(model: torch.nn.Module, val_table: Mapping[str, np.ndarray], *,
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """Fit the temperature on the val windows: ``{"method", "temperature", "fitted_on", "val_nll_before",
    "val_nll_after", "val_ece_before", "val_ece_after", "val_metrics"}`` (metrics per clip, unchanged by T)."""
    log_probs = window_log_probs(model, val_table, device=device)
    names = np.asarray(val_table["name"])
    by_clip = dict(zip(names.tolist(), np.asarray(val_table["quadrant"]).tolist()))
    temperature = fit_temperature(log_probs, names, by_clip)
    clips, before = clip_probabilities(log_probs, names)
    _, after = clip_probabilities(log_probs, names, temperature)
    labels = np.array([by_clip[c] for c in clips])
    return {
        "method": "temperature scaling (Guo et al. 2017) of the quadrant logits",
        "temperature": temperature,
        "fitted_on": "val",
        "val_nll_before": nll(before, labels), "val_nll_after": nll(after, labels),
        "val_ece_before": expected_calibration_error(before, labels),
        "val_ece_after": expected_calibration_error(after, labels),
        "val_metrics": quadrant_metrics(labels, after.argmax(axis=1)),
    }


def build_artifact(models: list[str], *, storage: str, cache_dir: str | os.PathLike,
                   emopia: str | os.PathLike | None = None, device: str | None = None,
                   endpoint_url: str | None = None, set_latest: bool = True, progress: bool = True) -> str:
    """A calibrated artifact from one trained model, or a calibrated seed ensemble from several.

    The members must share one configuration (mer.model.MerEnsemble). The val split's features come from the
    cache (extracted once if missing). Returns the new artifact's path or URL.
    """
    if not models:
        raise ValueError("build_artifact needs at least one model")
    artifacts = [load_artifact(m, storage=storage, device="cpu", endpoint_url=endpoint_url) for m in models]
    config = artifacts[0].config
    model = artifacts[0].model if len(artifacts) == 1 else MerEnsemble.from_members([a.model for a in artifacts])
    ensure_ray()
    val = extract_clips(load_split(emopia_root(emopia), "val"), config=config.features,
                        cache=FeatureCache(os.path.abspath(cache_dir)), progress=progress)
    target = device or "cpu"
    model.to(target)
    calibration = calibration_on_val(model, window_table(val.clips), device=target)
    members = [a.version for a in artifacts]
    meta: dict[str, Any] = {
        "calibration": calibration,
        "val_metrics": calibration["val_metrics"],
        "data_fingerprint": artifacts[0].meta.get("data_fingerprint"),
        "source_models": members,
    }
    if len(artifacts) == 1:
        meta["seed"] = artifacts[0].meta.get("seed")
    if len(artifacts) > 1:
        meta["members"] = members
    return save_artifact(model.state_dict(), config=config, storage=storage, meta=meta, set_latest=set_latest,
                         endpoint_url=endpoint_url)
