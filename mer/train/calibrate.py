"""Calibration of a trained model, fitted on EMOPIA's validation split.

:func:`calibration_on_val` fits the temperature of a model's quadrant probabilities on the val windows
(:mod:`mer.model.calibration`) and reports what it changed. Test is never read here.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from mer.model import clip_probabilities, expected_calibration_error, fit_temperature, nll, predict_windows
from mer.train.dataset import take
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
                       device: str | torch.device = "cpu", temperature: float | None = None) -> dict[str, Any]:
    """Fit the temperature on the val windows: ``{"method", "temperature", "fitted_on", "val_nll_before",
    "val_nll_after", "val_ece_before", "val_ece_after", "val_metrics"}`` (metrics per clip, unchanged by T).
    A given ``temperature`` is used as is (a model refitted on train + val: TrainConfig.temperature)."""
    log_probs = window_log_probs(model, val_table, device=device)
    names = np.asarray(val_table["name"])
    by_clip = dict(zip(names.tolist(), np.asarray(val_table["quadrant"]).tolist()))
    fitted_on = "val" if temperature is None else "given"
    if temperature is None:
        temperature = fit_temperature(log_probs, names, by_clip)
    clips, before = clip_probabilities(log_probs, names)
    _, after = clip_probabilities(log_probs, names, temperature)
    labels = np.array([by_clip[c] for c in clips])
    return {
        "method": "temperature scaling (Guo et al. 2017) of the quadrant logits",
        "temperature": temperature,
        "fitted_on": fitted_on,
        "val_nll_before": nll(before, labels), "val_nll_after": nll(after, labels),
        "val_ece_before": expected_calibration_error(before, labels),
        "val_ece_after": expected_calibration_error(after, labels),
        "val_metrics": quadrant_metrics(labels, after.argmax(axis=1)),
    }
