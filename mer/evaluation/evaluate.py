"""One trained model on a list of EMOPIA clips → an :class:`~mer.evaluation.results.EvalResult`.

Protocol (paper, Sec. IV): a model is selected on the validation split only (the best-val checkpoint of its
training run) and measured on the test split once. Metrics are per clip — a clip's quadrant probabilities are the
mean over its windows — and arousal and valence are binary accuracies derived from the predicted quadrant
(:mod:`mer.train.scores`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mer.config import BRANCHES, MerConfig
from mer.evaluation.paper import method_key
from mer.evaluation.results import EvalResult
from mer.features import FeatureCache
from mer.labels import attention_received
from mer.model import Artifact, group_rows, pick_device, predict_windows
from mer.train import Clip, ClipFeatures, ensure_ray, extract_clips, take, window_table


def window_predictions(artifact: Artifact, table: dict[str, np.ndarray], *, device: str | None = None,
                       batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Every window of a window table (:func:`mer.train.window_table`) through the model, ``batch_size`` at a time:
    quadrant probabilities (N, 4) and the attention each branch receives (N, 3; zeros without attention)."""
    device = pick_device(device)
    model = artifact.model.to(device).eval()
    n_windows = len(table["quadrant"])
    probs = np.zeros((n_windows, 4))
    received = np.zeros((n_windows, len(BRANCHES)))
    for start in range(0, n_windows, batch_size):
        rows = np.arange(start, min(start + batch_size, n_windows))
        out = predict_windows(model, take(table, rows), device=device)
        probs[rows] = out["quadrant_probs"]
        received[rows] = attention_received(out["attention"])
    return probs, received


def evaluate_features(
    artifact: Artifact,
    items: Sequence[ClipFeatures],
    *,
    device: str | None = None,
    batch_size: int = 16,
    method: str = "model",
    skipped: Sequence[tuple[str, str]] = (),
) -> EvalResult:
    """Evaluate a loaded model on clips whose features are already extracted (with the model's feature config).

    Windows go through :func:`mer.model.predict_windows` ``batch_size`` at a time; a clip's quadrant
    probabilities are the mean over its windows; its attention received per branch is the mean over its
    windows of :func:`mer.labels.attention_received` (per window first, because a window without notes has no
    symbolic query row). ``skipped`` (clip, reason) pairs of clips that failed extraction are recorded in
    ``extra``.
    """
    if not items:
        raise ValueError("no clips to evaluate (every clip failed feature extraction, or none were given)")
    table = window_table(list(items))  # (N windows, ...) stacked
    n_windows = len(table["quadrant"])
    probs, received = window_predictions(artifact, table, device=device, batch_size=batch_size)

    names, groups = group_rows(table["name"])  # clips in the items' order: window_table stacks them one by one
    clip_probs = np.stack([probs[rows].mean(axis=0) for rows in groups])  # (C, 4)
    clip_received = np.stack([received[rows].mean(axis=0) for rows in groups])  # (C, 3)
    config = artifact.config
    return EvalResult(
        method=method,
        names=names,
        true=np.array([table["quadrant"][rows[0]] for rows in groups], dtype=np.int64),
        probs=clip_probs,
        attention=clip_received if config.model.use_attention else None,
        branches=config.model.branches,
        seed=int(artifact.meta.get("seed") if artifact.meta.get("seed") is not None else config.training.seed),
        version=artifact.version,
        extra={"windows": int(n_windows), "skipped": [list(s) for s in skipped],
               "val_metrics": artifact.meta.get("val_metrics"), "best_epoch": artifact.meta.get("best_epoch"),
               "fitted_on": artifact.meta.get("fitted_on", "train"),  # "train+val": val_metrics are in-sample
               "artifact": artifact.url},
    )


def evaluate_artifact(
    artifact: Artifact,
    *,
    clips: Sequence[Clip],
    cache: FeatureCache,
    config: MerConfig | None = None,
    device: str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Evaluate a loaded model artifact on EMOPIA clips (normally the test split).

    Features are extracted with the artifact's own feature config (``config`` only overrides the evaluation
    batch size, ``config.tagging.batch_size``), through ``cache`` (Ray tasks; Ray is started if needed); clips
    that fail extraction are skipped and listed in ``result.extra["skipped"]``.

    Returns:
        :class:`EvalResult` with per-clip probabilities (N, 4), 4Q/arousal/valence accuracies, the (4, 4)
        confusion matrix, and the attention received per branch (N, 3) (None without self-attention).
    """
    ensure_ray()
    extraction = extract_clips(list(clips), config=artifact.config.features, cache=cache, progress=progress)
    batch_size = (config or artifact.config).tagging.batch_size
    return evaluate_features(artifact, extraction.clips, device=device, batch_size=max(batch_size, 1),
                             method=method_key(artifact.config), skipped=extraction.failures)
