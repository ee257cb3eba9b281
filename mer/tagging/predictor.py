"""The model on batches of window rows, as a Ray Data actor (or called directly by the local loop).

:class:`WindowPredictor` wraps :class:`mer.model.EmotionPredictor` with the tagger's failure handling. torch and
the model are imported when a predictor is built, not with this module: the feature tasks import the tagger's
modules and need neither.
"""
from __future__ import annotations

import time

import numpy as np

from mer.config import BRANCHES, QUADRANTS
from mer.tagging.prepare import ITEM_COLUMNS, WINDOW_COLUMNS, describe_error

PREDICTION_COLUMNS: tuple[str, ...] = ("quadrant_probs", "arousal_prob", "valence_prob", "attention", "inference_seconds")
"""Columns :class:`WindowPredictor` adds; it drops the big feature arrays so the rows coming back stay small."""


class WindowPredictor:
    """Labels batches of window rows with the model: :class:`mer.model.EmotionPredictor` plus failure handling.

    Failure rows (``failed_stage`` set) pass through with zero probabilities. If the model raises on a batch,
    the windows are retried one by one and only those that still fail become ``inference`` failures, so one
    item never takes a batch down. Returns the rows without the feature arrays, plus :data:`PREDICTION_COLUMNS`.
    Applied with ``map_batches(WindowPredictor, fn_constructor_kwargs=..., concurrency=..., num_gpus=...)``.
    """

    def __init__(self, model: str, *, storage: str | None = None, device: str | None = None,
                 num_threads: int | None = None) -> None:
        """``model``: artifact path/URL or version id (with ``storage``). ``num_threads``: torch intra-op threads
        (None: leave torch's default; an actor gets as many as the CPUs it reserves)."""
        import torch

        from mer.model import EmotionPredictor

        if num_threads is not None:
            # Many threads on a small batch contend with the feature tasks on the same cores for no gain.
            torch.set_num_threads(max(1, int(num_threads)))
        self.predictor = EmotionPredictor(model, storage=storage, device=device)
        self.heads = self.predictor.artifact.config.model.attention_heads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["name"])
        stage = np.asarray(batch["failed_stage"]).astype(object)
        reason = np.asarray(batch["failed_reason"]).astype(object)
        transient = np.asarray(batch["failed_transient"]).astype(bool)
        out: dict[str, np.ndarray] = {k: np.asarray(batch[k]) for k in (*WINDOW_COLUMNS[:4], *ITEM_COLUMNS)}
        quadrant_probs = np.zeros((n, len(QUADRANTS)), dtype=np.float32)
        arousal = np.zeros(n, dtype=np.float32)
        valence = np.zeros(n, dtype=np.float32)
        attention = np.zeros((n, self.heads, len(BRANCHES), len(BRANCHES)), dtype=np.float32)

        def run(rows: np.ndarray) -> None:
            inputs = {k: np.asarray(batch[k])[rows]
                      for k in ("tokens", "token_length", "chroma", "mfcc", "present", "summary")}
            result = self.predictor(inputs)
            quadrant_probs[rows] = result["quadrant_probs"]
            arousal[rows] = result["arousal_prob"]
            valence[rows] = result["valence_prob"]
            attention[rows] = result["attention"]

        good = np.flatnonzero(stage == "")
        if good.size:
            try:
                run(good)
            except Exception:  # noqa: BLE001 — find the window(s) at fault; the rest of the batch is fine
                for row in good:
                    try:
                        run(np.array([row]))
                    except Exception as error:  # noqa: BLE001
                        window = int(batch["window_index"][row])
                        stage[row] = "inference"
                        reason[row] = f"model failed on window {window}: {describe_error(error)}"
                        transient[row] = True
        out["failed_stage"], out["failed_reason"] = stage.astype(str), reason.astype(str)
        out["failed_transient"] = transient
        out["quadrant_probs"], out["arousal_prob"], out["valence_prob"], out["attention"] = (
            quadrant_probs, arousal, valence, attention)
        out["inference_seconds"] = np.full(n, (time.perf_counter() - start) / max(n, 1))  # the batch's time, shared
        return out
